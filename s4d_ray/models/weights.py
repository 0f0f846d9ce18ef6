"""Checkpoints from anywhere: local paths, `gs://`, `https://` (fsspec) into a local cache.

Only safe formats are ever opened by callers: safetensors, `torch.load(weights_only=True)`
(through `load_torch_checkpoint`, which checks the file's zip directory first),
`np.load(allow_pickle=False)`, protobuf GraphDefs.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from s4d_ray.errors import InputError, ResourceLimitError
from s4d_ray.io import fs
from s4d_ray.limits import env_limit

MAX_CHECKPOINT_BYTES = 8 << 30
"""Default cap on the bytes a torch checkpoint's members take uncompressed (from its zip
central directory, before `torch.load`); DUSt3R ViT-L, the largest used, is 2.1 GB.
`$S4D_MAX_CHECKPOINT_BYTES` raises it."""
MAX_CHECKPOINT_EXPANSION = 2
"""Default cap on (uncompressed members) / (file size) of a torch checkpoint: `torch.save`
stores its members uncompressed (ratio < 1), so a deflated 1 GB storage in a 1 MB file is a
bomb. `$S4D_MAX_CHECKPOINT_EXPANSION` raises it."""
_EXPANSION_SLACK = 1 << 20


class CheckpointError(InputError):
    """A file that is not the checkpoint a loader expects (names the URI and what is wrong)."""


class CheckpointLimitError(CheckpointError, ResourceLimitError):
    """A checkpoint whose declared size (from its headers) is over a limit."""


def checkpoint_file(uri: str) -> Path:
    """`cached_path(uri)`, which must be a regular file (a folder, FIFO or device given as a
    checkpoint is a CheckpointError naming it, never an IsADirectoryError or a hang)."""
    path = cached_path(uri)
    try:
        fs.input_size(str(path))
    except fs.NotRegularFileError as e:
        raise CheckpointError(f"checkpoint {uri!r}: {e}") from e
    return path


def check_torch_zip(
    path: Path, uri: str, max_bytes: int | None = None, what: str = "torch checkpoint"
) -> None:
    """Refuse a torch checkpoint before `torch.load` from its zip central directory alone:
    not a zip (a text file, the pre-1.6 format), or members whose uncompressed sizes sum to
    more than `max_bytes` (default `$S4D_MAX_CHECKPOINT_BYTES` or MAX_CHECKPOINT_BYTES) or to
    more than MAX_CHECKPOINT_EXPANSION x the file size (a compressed storage: a bomb)."""
    limit = max_bytes or env_limit("S4D_MAX_CHECKPOINT_BYTES", MAX_CHECKPOINT_BYTES)
    expansion = env_limit("S4D_MAX_CHECKPOINT_EXPANSION", MAX_CHECKPOINT_EXPANSION)
    try:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{uri!r} is not a {what}: not a zip archive (the torch.save format)"
            )
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{uri!r} is not a readable {what}: {e}") from e
    if not any(info.filename.endswith("data.pkl") for info in infos):
        raise CheckpointError(f"{uri!r} is not a {what}: the zip has no data.pkl")
    declared = sum(info.file_size for info in infos)
    biggest = max(infos, key=lambda info: info.file_size)
    size = path.stat().st_size
    if declared > limit:
        raise CheckpointLimitError(
            f"{uri!r}: its members take {declared} bytes uncompressed ({biggest.filename!r}: "
            f"{biggest.file_size}), more than the limit of {limit} (S4D_MAX_CHECKPOINT_BYTES)"
        )
    if declared > expansion * size + _EXPANSION_SLACK:
        raise CheckpointLimitError(
            f"{uri!r}: its members take {declared} bytes uncompressed in a {size}-byte file "
            f"({biggest.filename!r}: {biggest.file_size}), more than the limit of {expansion}x "
            "the file (S4D_MAX_CHECKPOINT_EXPANSION); torch.save never compresses"
        )


def load_torch_checkpoint(
    uri: str,
    safe_globals: Iterable[Any] = (),
    max_bytes: int | None = None,
    what: str = "torch checkpoint",
) -> Any:
    """`torch.load(weights_only=True)` of the checkpoint at `uri`, on CPU, after
    `checkpoint_file` and `check_torch_zip`: every way a file can be wrong is a
    CheckpointError naming it (`what` says what was expected), and nothing is allocated from
    an unchecked declared size."""
    import torch

    path = checkpoint_file(uri)
    check_torch_zip(path, uri, max_bytes, what)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        AttributeError,
        KeyError,
        TypeError,
        IndexError,
        OSError,
    ) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{uri!r} is not a safe-to-load {what}: {message}") from e


def cached_path(uri: str) -> Path:
    """Local path of `uri`: the path itself when local, else a cached copy keyed by the URI."""
    if fs.is_local(uri):
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            raise CheckpointError(f"checkpoint {uri!r} does not exist")
        return path
    source_fs, source_path = fs.filesystem(uri)
    try:
        info = source_fs.info(source_path)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {uri!r} not found") from e
    # keyed by URI and the object's version, so a checkpoint overwritten in place is refetched
    version = [
        str(info.get(k, "")) for k in ("size", "etag", "ETag", "mtime", "updated", "generation")
    ]
    key = hashlib.sha256("\n".join([uri, *version]).encode()).hexdigest()[:16]
    target = fs.cache_dir() / f"{key}-{uri.rstrip('/').rsplit('/', 1)[-1]}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with source_fs.open(source_path, "rb") as src, fs.open_atomic(str(target)) as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
        except FileNotFoundError as e:
            raise CheckpointError(f"checkpoint {uri!r} not found") from e
    return target


_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_version(uri: str) -> dict[str, object]:
    """What identifies the checkpoint at `uri` in an output's provenance: its URI, size in
    bytes and the sha256 of its bytes (of the local file, or of the cached copy of a remote
    one; remembered per process, keyed by path, size and mtime; ~0.5 s per 200 MB)."""
    path = cached_path(uri)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return {"weights_uri": uri, "weights_bytes": stat.st_size, "weights_sha256": _DIGESTS[key]}
