"""`s4d eval-pointmaps`: score predicted pointmap sequences against exported reference windows.

Predictions: WebDataset tar shards with the reference's sample keys, each holding
`pointmaps.npy` float32 [T,H,W,3] in the window's first camera frame (any model). Per sample:

- **Depth** — both pointmaps expressed as depth in the reference cameras (z of each point in its
  frame's exported camera; the reference's from its own depth, intrinsics and poses), on the
  reference's valid pixels where the prediction is finite and in front: Abs Rel = mean |ẑ − z|/z
  and δ < 1.25 = fraction with max(ẑ/z, z/ẑ) < 1.25; `metric` as predicted, `scaled` after one
  per-sequence scale (median of z/ẑ), as scale-free models are scored.
- **Poses** — each frame's camera recovered from the predicted pointmaps alone
  (`quality.poses_from_pointmaps`) against the exported poses: ATE after Sim(3) (Umeyama) and
  SE(3) alignment (m), RPE between consecutive frames (m, deg) — `geometry.pose_metrics`.

The JSON has the means over samples, the per-sample values, the reference keys with no
prediction (`missing`), and one failure row per sample that could not be scored (`failed`:
key → error; a member refused, corrupt or inconsistent) — the others are still scored.
"""

from __future__ import annotations

import json
import tarfile
from typing import Any

import numpy as np

from s4d_ray.geometry.pose_metrics import ate_se3, ate_sim3, rpe
from s4d_ray.io import fs
from s4d_ray.pointmaps.geometry import depth_in_cameras, depth_to_pointmaps
from s4d_ray.pointmaps.quality import poses_from_pointmaps
from s4d_ray.pointmaps.reader import (
    SampleError,
    decode_sample,
    iter_raw_samples,
    load_npy,
    read_member,
    shard_uris,
)

DELTA = 1.25


def depth_metrics(predicted: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Abs Rel and δ < 1.25 of depths [N] (both > 0), as given and after the median scale."""
    ratio = reference / predicted
    scale = float(np.median(ratio))
    out = {}
    for name, z in (("metric", predicted), ("scaled", predicted * scale)):
        out[f"abs_rel_{name}"] = float(np.mean(np.abs(z - reference) / reference))
        out[f"delta_{name}"] = float(np.mean(np.maximum(z / reference, reference / z) < DELTA))
    out["scale"] = scale
    return out


def score_sample(pointmaps: np.ndarray, reference: dict[str, Any]) -> dict[str, float]:
    """Metrics of one predicted sequence [T,H,W,3] against a decoded reference sample."""
    key = reference["key"]
    for name in ("depth", "mask", "intrinsics", "camera2world"):
        if name not in reference:
            raise SampleError(f"sample {key!r}: no {name}.npy in the reference")
    mask = np.asarray(reference["mask"], bool)
    k = np.asarray(reference["intrinsics"], np.float64)
    poses = np.asarray(reference["camera2world"], np.float64)
    if pointmaps.shape != (*mask.shape, 3):
        raise SampleError(f"sample {key!r}: pointmaps {pointmaps.shape}, reference {mask.shape}")
    ref_points = depth_to_pointmaps(np.where(mask, reference["depth"], 0), k, poses)
    finite = np.isfinite(pointmaps).all(axis=-1)
    predicted = np.where(finite[..., None], pointmaps, 0).astype(np.float32)
    z_ref = depth_in_cameras(ref_points, poses)
    z_pred = depth_in_cameras(predicted, poses)
    valid = mask & finite & (z_pred > 0) & (z_ref > 0)
    if valid.sum() < 16:
        raise SampleError(f"sample {key!r}: {int(valid.sum())} comparable pixels")
    out = depth_metrics(z_pred[valid].astype(np.float64), z_ref[valid].astype(np.float64))
    out["valid_pixels"] = int(valid.sum())
    recovered = poses_from_pointmaps(predicted, mask & finite, k)
    try:
        out["ate_sim3_m"] = ate_sim3(recovered, poses).rmse
    except ValueError:  # a camera that does not move has no Sim(3) scale
        out["ate_sim3_m"] = float("nan")
    out["ate_se3_m"] = ate_se3(recovered, poses).rmse
    rel = rpe(recovered, poses)
    out["rpe_translation_m"], out["rpe_rotation_deg"] = rel.translation_rmse, rel.rotation_rmse_deg
    return out


def _index(shards: list[str]) -> dict[str, tuple[str, dict[str, tarfile.TarInfo]]]:
    """key → (shard, members) of every sample in `shards` (tar headers only)."""
    index: dict[str, tuple[str, dict[str, tarfile.TarInfo]]] = {}
    for shard in shards:
        filesystem, path = fs.filesystem(shard)
        with filesystem.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    key, _, suffix = member.name.rsplit("/", 1)[-1].partition(".")
                    index.setdefault(key, (shard, {}))[1][suffix] = member
    return index


def _read_member(shard: str, member: tarfile.TarInfo, label: str) -> bytes:
    """One member of a prediction shard, size-checked from its header first."""
    filesystem, path = fs.filesystem(shard)
    with filesystem.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        return read_member(tar, member, label)


def _score(raw: dict[str, Any], entry: tuple[str, dict[str, tarfile.TarInfo]]) -> dict[str, float]:
    """Metrics of one reference sample (raw members) against its prediction."""
    raw.pop("rgb.mp4", None)  # frames are not scored
    reference = decode_sample(raw)
    key = reference["key"]
    mask = reference.get("mask")
    if mask is None:
        raise SampleError(f"sample {key!r}: no mask.npy in the reference")
    label = f"prediction {key!r} pointmaps.npy"
    data = _read_member(entry[0], entry[1]["pointmaps.npy"], label)
    pointmaps = load_npy(data, label, (*mask.shape, 3), "f").astype(np.float32)
    return score_sample(pointmaps, reference)


def evaluate_pointmaps(pred_uri: str, ref_uri: str) -> dict[str, Any]:
    """Score every reference sample that has a prediction; see the module docstring. A
    sample that cannot be scored is one row of `failed`; SampleError only when none could."""
    pred_shards, ref_shards = shard_uris(pred_uri), shard_uris(ref_uri)
    if not pred_shards:
        raise FileNotFoundError(f"no .tar shards under {pred_uri!r}")
    if not ref_shards:
        raise FileNotFoundError(f"no .tar shards under {ref_uri!r}")
    index = _index(pred_shards)
    per_sample: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    missing: list[str] = []
    for shard in ref_shards:
        for raw in iter_raw_samples(shard):
            key = str(raw["__key__"])
            entry = index.get(key)
            if entry is None or "pointmaps.npy" not in entry[1]:
                missing.append(key)
                continue
            try:
                per_sample[key] = _score(raw, entry)
            except (SampleError, ValueError, ArithmeticError) as error:
                failed[key] = f"{type(error).__name__}: {error}"
    if not per_sample:
        first = next(iter(failed.items()), None)
        why = f"; {len(failed)} failed, first {first[0]!r}: {first[1]}" if first else ""
        raise SampleError(
            f"no reference sample of {ref_uri!r} has a scorable prediction in {pred_uri!r}{why}"
        )
    names = sorted(next(iter(per_sample.values())))
    means = {name: float(np.nanmean([s[name] for s in per_sample.values()])) for name in names}
    return {
        "samples": len(per_sample),
        "missing": sorted(missing),
        "failed": failed,
        "mean": means,
        "per_sample": per_sample,
        "pred": pred_uri,
        "ref": ref_uri,
    }


def write_json(result: dict[str, Any], uri: str) -> None:
    """The result as JSON at any fsspec URI (atomic)."""
    with fs.open_atomic(uri, "w") as f:
        f.write(json.dumps(result, indent=2, sort_keys=True))
