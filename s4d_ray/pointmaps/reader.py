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
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import numpy as np

from s4d_ray.io import fs
from s4d_ray.io.dense import decode_frames
from s4d_ray.pointmaps.geometry import depth_to_pointmaps, normalise_pointmaps


class SampleError(ValueError):
    """A sample is missing a member or holds a corrupt one (names the sample and member)."""


def load_npy(data: bytes, label: str) -> np.ndarray:
    """`.npy` bytes → array, never unpickling."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise SampleError(f"{label}: corrupt .npy: {type(e).__name__}: {e}") from e


def decode_sample(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A WebDataset sample (member name without the key → bytes, plus `__key__`) → arrays:
    frames, depth (float32 m), mask, intrinsics, camera2world, meta (dict), and `pointmaps`
    when the sample holds predicted ones (`pointmaps.npy`). Frames only if `rgb.mp4` is there."""
    key = str(raw.get("__key__", "?"))
    out: dict[str, Any] = {"key": key}
    for name in ("depth", "mask", "intrinsics", "camera2world", "pointmaps"):
        member = f"{name}.npy"
        if member in raw and raw[member] is not None:
            out[name] = load_npy(bytes(raw[member]), f"sample {key!r} {member}")
    if "meta.json" in raw:
        out["meta"] = json.loads(bytes(raw["meta.json"]))
    if "rgb.mp4" in raw:
        out["frames"] = decode_frames(bytes(raw["rgb.mp4"]), f"sample {key!r} rgb.mp4")
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
    to its first dot), `__key__` set."""
    filesystem, path = fs.filesystem(shard_uri)
    current: dict[str, Any] | None = None
    with filesystem.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            key, _, suffix = name.partition(".")
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            extracted = tar.extractfile(member)
            current[suffix] = extracted.read() if extracted else b""
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
