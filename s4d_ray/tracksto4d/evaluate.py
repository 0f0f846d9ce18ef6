"""TracksTo4D against a clip's metric 3D tracks and cameras (the paper's protocol + a metric one).

Depth, on visible points of the estimated tracks (camera z, metres):
- `per_frame`: the official protocol — each frame's estimate scaled by median(gt)/median(est)
  of that frame, then Abs Rel = mean |s·d − d*| / d* and δ<1.25 = fraction with
  max(s·d/d*, d*/(s·d)) < 1.25, both averaged over frames. One deviation: a non-positive
  estimated depth counts as a δ failure (the official ratio test would count it as a hit).
- `global`: one scale per clip (median(gt)/median(est) over all its visible points): a model
  whose depth scale drifts within the clip is penalised (metric honesty of the stitching).
- `dynamic`: the per-frame protocol restricted to moving tracks (span > 5 cm in the world).
Poses (camera→world): ATE after Sim(3) (Umeyama) alignment of camera centres (m), RPE
translation (m) and rotation (deg) between consecutive frames of the aligned estimate, RMS as
the official `pose_eval.py`; the Sim(3) scale is reported too.

`evaluate_checkpoint` scores every clip it can: a clip that cannot be read, run or scored (a
static camera has no Sim(3) alignment) is one row of `failed` (clip id → error), the others
are scored; only when no clip could be is it a StageError.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from s4d_ray.errors import StageError
from s4d_ray.geometry.pose_metrics import ate_sim3, rpe
from s4d_ray.io.overlap import check_output
from s4d_ray.track.moving import moving_by_extent
from s4d_ray.tracksto4d.data import ClipTracks
from s4d_ray.tracksto4d.inference import ClipPrediction

DELTA = 1.25


def _depth_errors(est: np.ndarray, gt: np.ndarray, scale: float) -> tuple[float, float]:
    scaled = est * scale
    abs_rel = float(np.mean(np.abs(scaled - gt) / gt))
    with np.errstate(divide="ignore"):
        ratio = np.where(scaled > 0, np.maximum(scaled / gt, gt / scaled), np.inf)
    return abs_rel, float(np.mean(ratio < DELTA))


def depth_metrics(
    estimate: np.ndarray, truth: np.ndarray, valid: np.ndarray, global_scale: bool = False
) -> dict[str, float]:
    """Abs Rel and δ<1.25 of `estimate [M,T]` vs `truth [M,T]` (m) on `valid [M,T]`, averaged
    over frames with a valid point; per-frame median scaling, or one scale for all frames."""
    valid = valid & np.isfinite(estimate) & np.isfinite(truth) & (np.nan_to_num(truth) > 0)
    frames = np.nonzero(valid.any(axis=0))[0]
    if frames.size == 0:
        return {"abs_rel": float("nan"), "delta_1_25": float("nan"), "frames": 0, "points": 0}
    scale = None
    if global_scale:
        scale = float(np.median(truth[valid]) / np.median(estimate[valid]))
    rels, deltas = [], []
    for f in frames:
        est, gt = estimate[valid[:, f], f], truth[valid[:, f], f]
        s = scale if scale is not None else float(np.median(gt) / np.median(est))
        rel, delta = _depth_errors(est, gt, s)
        rels.append(rel)
        deltas.append(delta)
    out = {
        "abs_rel": float(np.mean(rels)),
        "delta_1_25": float(np.mean(deltas)),
        "frames": int(frames.size),
        "points": int(valid.sum()),
    }
    if scale is not None:
        out["scale"] = scale
    return out


def pose_metrics(estimate_c2w: np.ndarray, truth_c2w: np.ndarray) -> dict[str, float]:
    """ATE (m) after Sim(3), RPE translation (m) / rotation (deg) of the aligned estimate."""
    ate = ate_sim3(estimate_c2w, truth_c2w)
    rel = rpe(ate.alignment.apply_poses(estimate_c2w), truth_c2w)
    return {
        "ate_m": ate.rmse,
        "rpe_translation_m": rel.translation_rmse,
        "rpe_rotation_deg": rel.rotation_rmse_deg,
        "sim3_scale": ate.scale,
    }


def evaluate_prediction(tracks: ClipTracks, prediction: ClipPrediction) -> dict[str, Any]:
    """All metrics of one clip (see the module docstring) as a flat-ish JSON-able dict."""
    truth = tracks.depth[prediction.tracks]
    visible = tracks.visible[prediction.tracks]
    moving = moving_by_extent(tracks.points_world[prediction.tracks])
    return {
        "per_frame": depth_metrics(prediction.depth, truth, visible),
        "global": depth_metrics(prediction.depth, truth, visible, global_scale=True),
        "dynamic": depth_metrics(prediction.depth, truth, visible & moving[:, None]),
        **pose_metrics(prediction.camera2world, tracks.camera2world),
        "tracks": int(prediction.tracks.size),
        "moving_tracks": int(moving.sum()),
        "frames": tracks.num_frames,
    }


def summarize(per_clip: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and median over clips of every numeric metric (nested keys joined by '.')."""
    flat: dict[str, list[float]] = {}
    for metrics in per_clip.values():
        for key, value in metrics.items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, v in items:
                flat.setdefault(key if sub is None else f"{key}.{sub}", []).append(float(v))
    return {
        "mean": {k: float(np.nanmean(v)) for k, v in flat.items()},
        "median": {k: float(np.nanmedian(v)) for k, v in flat.items()},
        "clips": len(per_clip),
    }


def evaluate_checkpoint(
    checkpoint: str,
    npz: str,
    out: str | None = None,
    device: str = "auto",
    model_config: str | None = None,
    **inference: Any,
) -> dict[str, Any]:
    """`s4d eval-tracksto4d`: metrics of every clip at `npz` (file/folder/glob) + summary."""
    import torch

    from s4d_ray.io import fs
    from s4d_ray.io.clip_io import npz_stem, read_clip
    from s4d_ray.models.device import pick_device
    from s4d_ray.models.tracksto4d import load_tracksto4d
    from s4d_ray.tracksto4d.data import clip_tracks
    from s4d_ray.tracksto4d.inference import InferenceConfig, predict_clip

    check_output(out or "", {"--npz": npz, "--checkpoint": checkpoint}, "--out")
    uris = [npz] if npz.endswith(".npz") and fs.exists(npz) else fs.list_files(npz, ".npz")
    if not uris:
        raise FileNotFoundError(f"no .npz clip found at {npz!r}")
    torch_device = torch.device(pick_device(device))
    model = load_tracksto4d(checkpoint, config=model_config).to(torch_device)
    config = InferenceConfig(**inference)
    per_clip: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for uri in uris:
        clip_id = npz_stem(uri)
        try:
            tracks = clip_tracks(read_clip(uri))
            clip_id = tracks.clip_id
            prediction = predict_clip(model, tracks, config, torch_device)
            per_clip[clip_id] = evaluate_prediction(tracks, prediction)
        # one failure row per bad clip (unreadable npz, TracksInputError, a static camera's
        # undefined Sim(3) alignment...), the others are still scored
        except (StageError, ValueError, ArithmeticError, OSError) as e:
            failed[clip_id] = f"{type(e).__name__}: {e}"
    summary = summarize(per_clip)
    summary["failed"] = len(failed)
    result = {"checkpoint": checkpoint, "clips": per_clip, "failed": failed, "summary": summary}
    if out:
        fs.write_bytes(out, json.dumps(result, indent=1).encode())
    if not per_clip:
        clip_id, message = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more clips failed)" if len(failed) > 1 else ""
        raise StageError(clip_id, "eval-tracksto4d", message + more)
    return result
