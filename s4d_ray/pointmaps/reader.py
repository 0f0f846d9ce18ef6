"""Read exported pointmap windows: per sample the frames and pointmaps [T,H,W,3] in the first
camera's frame, metric or normalised (Sora3R: divided by the mean distance of the valid points
to the origin, the scale kept).

Three ways in, one decoding (`decode_sample` + `sample_pointmaps`):

    iter_pointmaps(URI)                      plain Python over the tar shards (fsspec)
    read_pointmaps(URI)                      a Ray Data dataset (`read_webdataset`), one row
                                             per sample, numpy columns
    PointmapDataset(URI)                     a torch IterableDataset (shards split over
                                             DataLoader workers)

A row / item: `key` str, `frames` uint8 [T,H,W,3], `pointmaps` float32 [T,H,W,3] (0 where
invalid), `mask` bool [T,H,W], `depth` float32 [T,H,W] m, `intrinsics` float32 [3,3],
`camera2world` float32 [T,4,4], `scale` float32 (m per unit: 1 when metric), `meta` (JSON text).
Members are decoded without pickle (`np.load(allow_pickle=False)`).
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import numpy as np

from s4d_ray.errors import InputError, ResourceLimitError
from s4d_ray.io import fs
from s4d_ray.io.clip_io import npy_header_within
from s4d_ray.io.dense import DenseOutputError, decode_frames
from s4d_ray.limits import env_limit
from s4d_ray.pointmaps.geometry import depth_to_pointmaps, normalise_pointmaps

MAX_MEMBER_BYTES = 512 << 20
"""Default cap on one member of a sample (from its tar header, before it is read; a default
export window's largest member is ~9 MB, a [17,512,512,3] float32 prediction 53 MB).
`$S4D_MAX_SAMPLE_MEMBER_BYTES` raises it."""
MAX_SAMPLE_BYTES = 2 << 30
"""Default cap on all members of one sample together; `$S4D_MAX_SAMPLE_BYTES` raises it."""
ERROR_KEY = "__error__"
"""Set in a raw sample (by `iter_raw_samples`) whose members were refused unread, to the
SampleError; decoding the sample raises it, so a reader can go on with the next sample."""


class SampleError(InputError):
    """A sample is missing a member or holds a corrupt one (names the sample and member)."""


class SampleLimitError(SampleError, ResourceLimitError):
    """A sample member whose declared size (tar header) is over a limit."""


def member_limits() -> tuple[int, int]:
    """(member bytes, sample bytes) caps in force: the defaults or the environment."""
    return (
        env_limit("S4D_MAX_SAMPLE_MEMBER_BYTES", MAX_MEMBER_BYTES),
        env_limit("S4D_MAX_SAMPLE_BYTES", MAX_SAMPLE_BYTES),
    )


def check_member(member: tarfile.TarInfo, label: str) -> None:
    """Refuse a tar member from its header alone, before it is read: a GNU/PAX sparse member
    (a 10 KB tar can declare 1 GiB of holes) or one over the member cap."""
    if member.issparse():
        raise SampleError(f"{label}: a sparse tar member, not accepted")
    limit, _ = member_limits()
    if member.size > limit:
        raise SampleLimitError(
            f"{label}: {member.size} bytes, more than the limit of {limit} "
            "(S4D_MAX_SAMPLE_MEMBER_BYTES)"
        )


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str) -> bytes:
    """A regular member's bytes after `check_member`."""
    check_member(member, label)
    extracted = tar.extractfile(member)
    return extracted.read() if extracted else b""


def load_npy(
    data: bytes, label: str, shape: tuple[int | None, ...] | None = None, kinds: str = ""
) -> np.ndarray:
    """`.npy` bytes → array, never unpickling. The header is checked first
    (`clip_io.npy_header_within`: an .npy, no objects, within the member's bytes), then
    against `shape` (None = any size on that axis) and the dtype `kinds` ('f', 'b', ...)."""
    stream = io.BytesIO(data)
    try:
        declared, dtype = npy_header_within(stream, len(data))
    except ValueError as e:
        raise SampleError(f"{label}: {e}") from e
    if shape is not None and (
        len(declared) != len(shape)
        or any(want is not None and got != want for got, want in zip(declared, shape, strict=True))
    ):
        pretty = "[" + ",".join("*" if n is None else str(n) for n in shape) + "]"
        raise SampleError(f"{label}: shape {list(declared)}, expected {pretty}")
    if kinds and dtype.kind not in kinds:
        raise SampleError(f"{label}: dtype {dtype}, expected kind {kinds!r}")
    stream.seek(0)
    try:
        return np.lib.format.read_array(stream, allow_pickle=False)
    except Exception as e:  # truncated data: ValueError, EOFError, ...
        raise SampleError(f"{label}: corrupt .npy: {type(e).__name__}: {e}") from e


def _finite(array: np.ndarray, label: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise SampleError(f"{label}: contains NaN or inf")
    return array


def decode_sample(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A WebDataset sample (member name without the key → bytes, plus `__key__`) → arrays:
    frames, depth (float32 m), mask, intrinsics, camera2world, meta (dict), and `pointmaps`
    when the sample holds predicted ones (`pointmaps.npy`). Frames only if `rgb.mp4` is there.

    Every member is checked from its header before it is decoded and against the others:
    depth, mask [T,H,W], pointmaps [T,H,W,3], intrinsics finite [3,3], camera2world finite
    [T,4,4] (or [T,3,4]), rgb.mp4 at most T frames of H x W, meta.json an object. Anything
    else is a SampleError naming the sample and the member."""
    key = str(raw.get("__key__", "?"))
    refused = raw.get(ERROR_KEY)
    if refused:
        kind = type(refused) if isinstance(refused, SampleError) else SampleError
        raise kind(str(refused))
    out: dict[str, Any] = {"key": key}

    def member(name: str) -> bytes | None:
        value = raw.get(name)
        return None if value is None else bytes(value)

    t = h = w = None
    for name, kinds in (("depth", "f"), ("mask", "b"), ("pointmaps", "f")):
        data = member(f"{name}.npy")
        if data is None:
            continue
        shape = (t, h, w, 3) if name == "pointmaps" else (t, h, w)
        out[name] = load_npy(data, f"sample {key!r} {name}.npy", shape, kinds)
        t, h, w = out[name].shape[:3]
    data = member("intrinsics.npy")
    if data is not None:
        label = f"sample {key!r} intrinsics.npy"
        k = _finite(load_npy(data, label, (3, 3), "fiu").astype(np.float64), label)
        if k[0, 0] == 0 or k[1, 1] == 0:
            raise SampleError(f"{label}: zero focal length")
        out["intrinsics"] = k.astype(np.float32)
    data = member("camera2world.npy")
    if data is not None:
        label = f"sample {key!r} camera2world.npy"
        poses = load_npy(data, label, (t, None, 4), "f")
        if poses.shape[1] not in (3, 4):
            raise SampleError(f"{label}: shape {list(poses.shape)}, expected [T,4,4] or [T,3,4]")
        out["camera2world"] = _finite(poses, label)
    data = member("meta.json")
    if data is not None:
        try:
            meta = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise SampleError(
                f"sample {key!r} meta.json: not valid JSON: {type(e).__name__}"
            ) from e
        if not isinstance(meta, dict):
            raise SampleError(f"sample {key!r} meta.json: expected a JSON object")
        out["meta"] = meta
    data = member("rgb.mp4")
    if data is not None:
        label = f"sample {key!r} rgb.mp4"
        size = (h, w) if h is not None and w is not None else None  # set together
        try:
            out["frames"] = decode_frames(data, label, t, size)
        except DenseOutputError as e:
            error = SampleLimitError if isinstance(e, ResourceLimitError) else SampleError
            raise error(str(e)) from e
    if "depth" in out:
        out["depth"] = out["depth"].astype(np.float32)
    return out


def sample_pointmaps(sample: Mapping[str, Any], normalise: bool = False) -> dict[str, Any]:
    """Pointmaps [T,H,W,3] float32 of a decoded reference sample (depth + K + poses), metric
    or divided by the mean distance to the first camera (`scale` = that distance, m)."""
    key = sample.get("key", "?")
    for name in ("depth", "mask", "intrinsics", "camera2world"):
        if name not in sample:
            raise SampleError(f"sample {key!r}: no {name}.npy")
    mask = np.asarray(sample["mask"], bool)
    depth = np.where(mask, sample["depth"], 0).astype(np.float32)
    points = depth_to_pointmaps(depth, sample["intrinsics"], sample["camera2world"])
    scale = 1.0
    if normalise:
        points, scale = normalise_pointmaps(points, mask)
    return {
        "key": key,
        "frames": sample.get("frames"),
        "pointmaps": points.astype(np.float32),
        "mask": mask,
        "depth": depth,
        "intrinsics": np.asarray(sample["intrinsics"], np.float32),
        "camera2world": np.asarray(sample["camera2world"], np.float32),
        "scale": np.float32(scale),
        "meta": json.dumps(sample.get("meta", {}), sort_keys=True),
    }


def shard_uris(uri: str) -> list[str]:
    """Tar shards of an export (its `shards/` folder), a folder of tars, a glob or one tar."""
    if uri.endswith(".tar"):
        return [uri]
    shards = fs.list_files(fs.join(uri, "shards"), ".tar")
    return shards or fs.list_files(uri, ".tar")


def iter_raw_samples(shard_uri: str) -> Iterator[dict[str, Any]]:
    """Raw WebDataset samples of one tar shard, streamed: members grouped by key (the name up
    to its first dot), `__key__` set. Members are size-checked from their headers before they
    are read (`check_member`, and the sample's total); a sample with a refused member is
    yielded with `ERROR_KEY` set and its members dropped, so the next samples still come."""
    filesystem, path = fs.filesystem(shard_uri)
    current: dict[str, Any] | None = None
    total = 0
    _, sample_limit = member_limits()
    try:
        with filesystem.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isfile() and not member.issparse():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, _, suffix = name.partition(".")
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current, total = {"__key__": key}, 0
                if current.get(ERROR_KEY):
                    continue
                label = f"sample {key!r} {suffix}"
                try:
                    check_member(member, label)
                    total += member.size
                    if total > sample_limit:
                        raise SampleLimitError(
                            f"{label}: the sample's members take {total} bytes, more than the "
                            f"limit of {sample_limit} (S4D_MAX_SAMPLE_BYTES)"
                        )
                except SampleError as error:
                    current = {"__key__": key, ERROR_KEY: error}
                    continue
                current[suffix] = read_member(tar, member, label)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise SampleError(
            f"shard {shard_uri!r}: not a readable tar: {type(e).__name__}: {e}"
        ) from e
    if current is not None:
        yield current


def iter_pointmaps(
    uri: str, normalise: bool = False, shards: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Every sample of an export as `sample_pointmaps` dicts (plain Python, no Ray)."""
    for shard in shards if shards is not None else shard_uris(uri):
        for raw in iter_raw_samples(shard):
            yield sample_pointmaps(decode_sample(raw), normalise)


def _row(raw: dict[str, Any], normalise: bool) -> dict[str, Any]:
    return sample_pointmaps(decode_sample(raw), normalise)


def read_pointmaps(uri: str, normalise: bool = False, num_cpus: float = 1.0):
    """A Ray Data dataset of the export's samples (`read_webdataset` without its decoder:
    members stay bytes until `decode_sample`, so nothing is unpickled), one row per sample."""
    import ray.data

    shards = shard_uris(uri)
    if not shards:
        raise FileNotFoundError(f"no .tar shards under {uri!r}")
    ds = ray.data.read_webdataset(shards, decoder=None)
    return ds.map(partial(_row, normalise=normalise), num_cpus=num_cpus)


def _torch_item(sample: dict[str, Any]) -> dict[str, Any]:
    import torch

    item: dict[str, Any] = {"key": sample["key"], "meta": sample["meta"]}
    for name in ("pointmaps", "mask", "depth", "intrinsics", "camera2world"):
        item[name] = torch.from_numpy(np.ascontiguousarray(sample[name]))
    item["frames"] = torch.from_numpy(np.ascontiguousarray(sample["frames"]))
    item["scale"] = torch.tensor(float(sample["scale"]))
    return item


def _make_torch_dataset():
    from torch.utils.data import IterableDataset, get_worker_info

    class PointmapDataset(IterableDataset):
        """The export's samples as torch tensors (frames uint8 [T,H,W,3], pointmaps float32
        [T,H,W,3], ...); with DataLoader workers each reads every num_workers-th shard."""

        def __init__(self, uri: str, normalise: bool = False) -> None:
            super().__init__()
            self.shards = shard_uris(uri)
            if not self.shards:
                raise FileNotFoundError(f"no .tar shards under {uri!r}")
            self.normalise = normalise

        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = get_worker_info()
            shards = self.shards if info is None else self.shards[info.id :: info.num_workers]
            for sample in iter_pointmaps("", self.normalise, shards):
                yield _torch_item(sample)

    return PointmapDataset


def __getattr__(name: str) -> Any:
    # torch is imported only when the torch dataset is asked for
    if name == "PointmapDataset":
        cls = _make_torch_dataset()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
