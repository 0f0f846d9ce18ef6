"""Checkpoints from anywhere: local paths, `gs://`, `https://` (fsspec) into a local cache.

Only safe formats are ever opened by callers: safetensors, `torch.load(weights_only=True)`,
`np.load(allow_pickle=False)`, protobuf GraphDefs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from s4d_ray.io import fs


class CheckpointError(ValueError):
    """A file that is not the checkpoint a loader expects (names the URI and what is wrong)."""


def cache_dir() -> Path:
    """Cache folder: `$S4D_CACHE_DIR`, else `~/.cache/s4d_ray/weights`."""
    root = os.environ.get("S4D_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "s4d_ray", "weights"
    )
    return Path(root)


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
    target = cache_dir() / f"{key}-{uri.rstrip('/').rsplit('/', 1)[-1]}"
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
