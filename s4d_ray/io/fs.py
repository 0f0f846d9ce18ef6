"""fsspec helpers: one way to read, write and list local paths, `gs://`, `memory://`, `https://`.

Local writes are atomic (temp file + rename); object stores get single-shot writes, which are
atomic by nature. `gs://` works anonymously on public buckets (e.g. `gs://stereo4d`) and honours
`STORAGE_EMULATOR_HOST` for a local GCS emulator.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import fsspec

from s4d_ray.errors import S4DError

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def cache_dir() -> Path:
    """This machine's s4d cache folder (downloaded weights, JAX's compiled programs):
    `$S4D_CACHE_DIR`, else `~/.cache/s4d_ray/weights`."""
    root = os.environ.get("S4D_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "s4d_ray", "weights"
    )
    return Path(root)


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


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a file or object. A local path must be a regular file (a FIFO or device
    is refused before it is opened); with `max_bytes`, larger inputs are refused."""
    fs, path = filesystem(uri)
    if is_local(uri) or max_bytes is not None:
        input_size(uri, max_bytes)
    with fs.open(path, "rb") as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise InputTooLargeError(f"{uri!r} has more than {max_bytes} bytes")
    return data


def open_input(uri: str) -> IO[bytes]:
    """A seekable binary file object of an input that must be a regular file or an object
    with a size (see `input_size`); for readers that seek through headers."""
    input_size(uri)
    fs, path = filesystem(uri)
    return fs.open(path, "rb")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if is_local(uri):
        fs.makedirs(path, exist_ok=True)


TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".partial"
"""Temp files of atomic writes are `.tmp-<random>-<target name>.partial`: skipped by every
listing (`is_internal`), and never ending in an output suffix such as `.parquet`."""


class NotRegularFileError(S4DError, OSError):
    """An input that is not a regular file or object with a size (a FIFO, a device, a folder)."""


class InputTooLargeError(S4DError, OSError):
    """An input larger than the size allowed for it."""


def temp_name(target: str) -> str:
    """A temp-file name for writing `target` atomically (see TEMP_PREFIX)."""
    return f"{TEMP_PREFIX}{os.urandom(6).hex()}-{posixpath.basename(target)}{TEMP_SUFFIX}"


INTERNAL_PREFIXES = (TEMP_PREFIX, ".s4d-")
"""Names of our own bookkeeping files: temp files of writes (`.tmp-`), the output lease and
write probes (`.s4d-`). No listing of inputs or outputs ever returns them."""


def is_internal(path: str) -> bool:
    """Whether the last component of `path` is one of our temp or bookkeeping files."""
    return posixpath.basename(path.rstrip("/")).startswith(INTERNAL_PREFIXES)


def remove_stale_temp_files(folder_uri: str) -> list[str]:
    """Delete the temp files that killed writers left in a local folder (ours, `.tmp-*`,
    also those of older versions that ended in the target's suffix); return what was removed.
    Only call it while holding the folder's output lease: a live writer's temp file is also a
    `.tmp-*` file. Object stores have no temp files (single-shot uploads)."""
    if not is_local(folder_uri):
        return []
    _, path = filesystem(folder_uri)
    if not os.path.isdir(path):
        return []
    removed = []
    for entry in os.scandir(path):
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.path)
    return sorted(removed)


def input_size(uri: str, max_bytes: int | None = None) -> int:
    """Size in bytes of an input that must be a regular file (symlinks are followed to their
    target, wherever it is) or an object with a known size; raise NotRegularFileError for a
    FIFO, device, socket or folder (reading those would hang or never end) and
    InputTooLargeError above `max_bytes`."""
    fs, path = filesystem(uri)
    if is_local(uri):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {uri!r}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(
                f"{uri!r} is not a regular file ({_file_kind(st.st_mode)}); inputs must be files"
            )
        size = int(st.st_size)
    else:
        info = fs.info(path)
        if info.get("type") not in ("file", None) or info.get("size") is None:
            raise NotRegularFileError(f"{uri!r} is not an object with a size: {info.get('type')}")
        size = int(info["size"])
    if max_bytes is not None and size > max_bytes:
        raise InputTooLargeError(f"{uri!r} has {size} bytes, more than the limit of {max_bytes}")
    return size


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


@contextmanager
def open_atomic(uri: str, mode: str = "wb") -> Iterator[IO]:
    """Open `uri` for writing so that readers never see a partial file.

    Local: write to a hidden temp file in the same folder (`temp_name`), fsync, rename over
    the target. Object stores: buffer and upload in one shot when the context exits cleanly.
    """
    fs, path = filesystem(uri)
    if is_local(uri):
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, temp_name(path))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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


def list_paths(uri_or_glob: str, suffix: str = "") -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The filesystem and the sorted paths in it of the files in a folder or matching a glob,
    filtered by suffix: ONE listing (one paginated request on object stores), no per-file
    calls (benchmarks/bench_startup.py)."""
    fs, path = filesystem(uri_or_glob)
    if any(ch in path for ch in "*?["):
        paths = fs.glob(path)
    elif is_local(uri_or_glob) and os.path.isdir(path):
        # scandir's entry types come with the listing: no stat per file (fsspec's ls stats each)
        with os.scandir(path) as entries:
            paths = [posixpath.join(path, e.name) for e in entries if not _is_folder(e)]
    elif fs.isdir(path):
        paths = [e["name"] for e in fs.ls(path, detail=True) if e["type"] != "directory"]
    else:
        paths = [path] if fs.exists(path) else []
    # temp files of writes in progress or killed, the output lease: never inputs or outputs
    return fs, [p for p in sorted(paths) if p.endswith(suffix) and not is_internal(p)]


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether a listed entry is a folder (links followed). A link that loops or dangles is
    listed as a file: reading it then fails naming it, one clip's failure, instead of the
    whole listing failing with ELOOP."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def list_files(uri_or_glob: str, suffix: str = "") -> list[str]:
    """Sorted full URIs of the files in a folder or matching a glob, filtered by suffix."""
    fs, paths = list_paths(uri_or_glob, suffix)
    if is_local(uri_or_glob):
        return paths
    protocol = fsspec.utils.get_protocol(uri_or_glob)
    # fsspec roots memory:// paths at "/"; give them back in the form `join` builds
    unstrip = (
        (lambda p: f"memory://{p.lstrip('/')}") if protocol == "memory" else fs.unstrip_protocol
    )
    return [unstrip(p) for p in paths]
