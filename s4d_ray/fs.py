"""fsspec helpers: one way to read, write and list local paths, `gs://`, `memory://`, `https://`.

Local writes are atomic (temp file + rename); object stores get single-shot writes, which are
atomic by nature. `gs://` works anonymously on public buckets (e.g. `gs://stereo4d`) and honours
`STORAGE_EMULATOR_HOST` for a local GCS emulator.
"""

from __future__ import annotations

import io
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import fsspec

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _storage_options(uri: str) -> dict:
    """Per-protocol options: anonymous GCS unless credentials or an emulator are configured."""
    protocol = fsspec.utils.get_protocol(uri)
    if protocol in ("gs", "gcs"):
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            return {"token": "anon", "endpoint_url": os.environ["STORAGE_EMULATOR_HOST"]}
        if not (
            os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            or os.path.exists(
                os.path.expanduser("~/.config/gcloud/application_default_credentials.json")
            )
        ):
            return {"token": "anon"}
    return {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri, **_storage_options(uri))
    return fs, path


def is_local(uri: str) -> bool:
    return fsspec.utils.get_protocol(uri) in ("file", "local")


def join(base: str, *parts: str) -> str:
    """Join URI parts with `/` (works for local paths and object stores alike)."""
    if is_local(base) and "://" not in base:
        return os.path.join(base, *parts)
    return posixpath.join(base, *parts)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if is_local(uri):
        fs.makedirs(path, exist_ok=True)


@contextmanager
def open_atomic(uri: str, mode: str = "wb") -> Iterator[IO]:
    """Open `uri` for writing so that readers never see a partial file.

    Local: write to a temp file in the same folder, fsync, rename over the target.
    Object stores: buffer and upload in one shot when the context exits cleanly.
    """
    fs, path = filesystem(uri)
    if is_local(uri):
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
        try:
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        buf = io.BytesIO() if "b" in mode else io.StringIO()
        yield buf
        data = buf.getvalue()
        fs.pipe_file(path, data.encode() if isinstance(data, str) else data)


def write_bytes(uri: str, data: bytes) -> None:
    with open_atomic(uri, "wb") as f:
        f.write(data)


def list_files(uri_or_glob: str, suffix: str = "") -> list[str]:
    """Sorted full URIs of the files in a folder or matching a glob, filtered by suffix."""
    fs, path = filesystem(uri_or_glob)
    if any(ch in path for ch in "*?["):
        paths = fs.glob(path)
    elif fs.isdir(path):
        paths = [p for p in fs.ls(path, detail=False) if not fs.isdir(p)]
    else:
        paths = [path] if fs.exists(path) else []
    if is_local(uri_or_glob):
        return [p for p in sorted(paths) if p.endswith(suffix)]
    protocol = fsspec.utils.get_protocol(uri_or_glob)
    # fsspec roots memory:// paths at "/"; give them back in the form `join` builds
    unstrip = (
        (lambda p: f"memory://{p.lstrip('/')}") if protocol == "memory" else fs.unstrip_protocol
    )
    return [unstrip(p) for p in sorted(paths) if p.endswith(suffix)]
