"""Accuracy of the engine's 3D tracks against synthetic ground truth.

For every output track, the surface point it starts on is found by casting the ray through its
projection at its first stored frame into the exact synthetic scene; that point's true
trajectory is then compared with the track at every stored frame. The error therefore includes
depth errors and 2D tracking drift alike (metres, reported in cm).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from s4d_ray.errors import InputError
from s4d_ray.geometry.camera import (
    RECTIFIED_HFOV_DEG,
    RECTIFIED_SIZE,
    STEREO_BASELINE_M,
    focal_length_px,
    intrinsics,
    project_points,
)
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, read_clip
from s4d_ray.io.writer import NPZ_DIR
from s4d_ray.synthetic.synth import Ellipsoid, load_ground_truth, scene_of


def true_trajectories(
    record: ClipRecord, ground_truth: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """GT world trajectories [N,T,3] m of the points the tracks start on, and whether each
    track starts on a moving object [N] (NaN rows: the start ray hit nothing)."""
    scene = scene_of(ground_truth)
    times = ground_truth["clip_times"]
    dense = record.dense_tracks()
    first = np.argmax(np.isfinite(dense[..., 0]), axis=1)
    start = dense[np.arange(len(dense)), first]
    truth = np.full(dense.shape, np.nan)
    moving = np.zeros(len(dense), bool)
    for frame in np.unique(first):
        sel = np.nonzero(first == frame)[0]
        c2w = record.camera2world[frame].astype(np.float64)
        offset = start[sel] - c2w[:, 3]
        hits = scene.cast(
            c2w[:, 3], offset / np.linalg.norm(offset, axis=1, keepdims=True), times[frame]
        )
        for surface_index in np.unique(hits.surface[hits.surface >= 0]):
            surf = scene.surfaces[surface_index]
            on = hits.surface == surface_index
            rows = sel[on]
            canon = hits.canonical[on]
            if isinstance(surf, Ellipsoid):
                moving[rows] = True
                for t, time_s in enumerate(times):
                    truth[rows, t] = surf.to_world(canon, time_s)
            else:
                truth[rows] = canon[:, None, :]
    return truth, moving


DEPTH_BANDS_M = ((0.0, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 20.0))
"""Depth bands (true camera depth, m) of the banded accuracy table."""
DISPARITY_ERRORS_PX = (0.25, 0.45)
"""Stated disparity errors for the stereo limit: 0.25 px (a good matcher on sharp texture) and
0.45 px, the median SGBM disparity error measured on the synthetic frames
(tests/test_on_synth_ground_truth.py)."""


def stereo_depth_error(
    depth_m: np.ndarray | float,
    disparity_error_px: float,
    focal_px: float = focal_length_px(RECTIFIED_SIZE, RECTIFIED_HFOV_DEG),
    baseline_m: float = STEREO_BASELINE_M,
) -> np.ndarray:
    """Depth error (m) that a disparity error alone implies: δz = z²·δd / (f·b).

    Defaults: the rectified camera, f = 443.4 px, b = 0.063 m (f·b = 27.9 px·m)."""
    depth = np.asarray(depth_m, dtype=np.float64)
    return depth**2 * disparity_error_px / (focal_px * baseline_m)


def point_errors(record: ClipRecord, ground_truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per stored track point with a ground-truth trajectory (P points):
    error_cm [P] 3D error, depth_m [P] true camera depth, relative_depth_error [P]
    |z_out − z_true| / z_true in that frame's camera, moving [P] bool (on a moving object)."""
    truth, moving = true_trajectories(record, ground_truth)
    dense = record.dense_tracks()
    stored = np.isfinite(dense[..., 0]) & np.isfinite(truth[..., 0])
    k = intrinsics(RECTIFIED_SIZE, RECTIFIED_SIZE, RECTIFIED_HFOV_DEG)
    w2c = record.world2camera()
    parts: dict[str, list[np.ndarray]] = {
        "error_cm": [],
        "depth_m": [],
        "relative_depth_error": [],
        "moving": [],
    }
    for t in range(record.num_frames):
        sel = stored[:, t]
        _, z_out = project_points(dense[sel, t], w2c[t], k)
        _, z_true = project_points(truth[sel, t], w2c[t], k)
        parts["error_cm"].append(100 * np.linalg.norm(dense[sel, t] - truth[sel, t], axis=-1))
        parts["depth_m"].append(z_true)
        parts["relative_depth_error"].append(np.abs(z_out - z_true) / z_true)
        parts["moving"].append(moving[sel])
    empty = {"moving": np.zeros(0, bool)}
    return {
        key: np.concatenate(values) if values else empty.get(key, np.zeros(0))
        for key, values in parts.items()
    }


def concat_point_errors(many: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Pool the `point_errors` of several clips."""
    keys = ("error_cm", "depth_m", "relative_depth_error", "moving")
    return {k: np.concatenate([m[k] for m in many]) if many else np.zeros(0) for k in keys}


def banded_errors(
    errors: dict[str, np.ndarray],
    bands: tuple[tuple[float, float], ...] = DEPTH_BANDS_M,
    disparity_errors_px: tuple[float, ...] = DISPARITY_ERRORS_PX,
) -> list[dict[str, Any]]:
    """Accuracy per depth band beside the stereo limit, from `point_errors` (pooled or not).

    Per band [lo, hi) m of true depth: points, median true depth (m), median 3D error (cm),
    median relative depth error, and for each stated disparity error δd the depth error
    stereo alone implies at the band's median depth, `stereo_cm_<δd>` and
    `stereo_relative_<δd>` (= δz/z). NaN where a band has no points."""
    rows = []
    for lo, hi in bands:
        sel = (errors["depth_m"] >= lo) & (errors["depth_m"] < hi)
        count = int(sel.sum())
        z = float(np.median(errors["depth_m"][sel])) if count else float("nan")
        row = {
            "band": f"{lo:g}-{hi:g} m" if lo > 0 else f"< {hi:g} m",
            "lo_m": lo,
            "hi_m": hi,
            "points": count,
            "median_depth_m": z,
            "median_error_cm": float(np.median(errors["error_cm"][sel])) if count else float("nan"),
            "median_relative_depth_error": float(np.median(errors["relative_depth_error"][sel]))
            if count
            else float("nan"),
        }
        for d in disparity_errors_px:
            dz = float(stereo_depth_error(z, d))
            row[f"stereo_cm_{d:g}"] = 100 * dz
            row[f"stereo_relative_{d:g}"] = dz / z if count else float("nan")
        rows.append(row)
    return rows


def format_band_table(
    rows: list[dict[str, Any]], disparity_errors_px: tuple[float, ...] = DISPARITY_ERRORS_PX
) -> str:
    """`banded_errors` as a fixed-width text table (what the demo prints)."""
    head = f"{'depth band':<11}{'points':>8}{'med z m':>9}{'3D err cm':>11}"
    head += "".join(f"{f'stereo@{d:g}px cm':>17}" for d in disparity_errors_px)
    head += f"{'depth err':>11}" + "".join(f"{f'@{d:g}px':>9}" for d in disparity_errors_px)
    lines = [head]
    for given in rows:
        r = {k: float("nan") if v is None else v for k, v in given.items()}  # JSON null -> NaN
        if not r["points"]:
            lines.append(f"{r['band']:<11}{0:>8}  (no points)")
            continue
        line = f"{r['band']:<11}{r['points']:>8}{r['median_depth_m']:>9.2f}{r['median_error_cm']:>11.1f}"
        line += "".join(f"{r[f'stereo_cm_{d:g}']:>17.1f}" for d in disparity_errors_px)
        line += f"{r['median_relative_depth_error']:>10.1%} "
        line += "".join(f"{r[f'stereo_relative_{d:g}']:>8.1%} " for d in disparity_errors_px)
        lines.append(line.rstrip())
    f_b = focal_length_px(RECTIFIED_SIZE, RECTIFIED_HFOV_DEG) * STEREO_BASELINE_M
    lines.append(
        f"stereo@δd: the depth error a disparity error δd alone implies, δz = z²·δd/(f·b) at the "
        f"band's median depth (f·b = {f_b:.1f} px·m)"
    )
    return "\n".join(lines)


def evaluate_clip(
    record: ClipRecord,
    ground_truth: dict[str, np.ndarray] | None = None,
    errors: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Median 3D track error (cm) over stored points, static and moving, tracks kept, and the
    same per depth band beside the stereo limit (`bands`, see `banded_errors`).

    Give the clip's `ground_truth`, or its `point_errors` already computed (`errors`)."""
    if errors is None:
        if ground_truth is None:
            raise ValueError(f"clip {record.name!r}: give ground_truth or errors")
        errors = point_errors(record, ground_truth)
    metadata = json.loads(str(record.extras.get("metadata", "{}")))
    tracked = metadata.get("tracks_tracked", record.num_tracks)
    error_cm, moving = errors["error_cm"], errors["moving"]
    return {
        "tracks": int(record.num_tracks),
        "fraction_kept": float(record.num_tracks / tracked) if tracked else 0.0,
        **clip_medians(errors),
        "median_error_static_cm": _median(error_cm[~moving]),
        "median_error_moving_cm": _median(error_cm[moving]),
        "bands": banded_errors(errors),
    }


def _median(values: np.ndarray) -> float:
    """The median, NaN for no value."""
    return float(np.median(values)) if values.size else float("nan")


def clip_medians(errors: dict[str, np.ndarray]) -> dict[str, Any]:
    """Points, median 3D error (cm) and median relative depth error of one clip's
    `point_errors` (NaN medians when it has no point)."""
    return {
        "points": int(errors["error_cm"].size),
        "median_error_cm": _median(errors["error_cm"]),
        "median_relative_depth_error": _median(errors["relative_depth_error"]),
    }


def run_accuracy(per_clip_errors: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """The accuracy section of a run report from each clip's `point_errors`: the pooled
    `banded_errors`, per-clip medians and the disparity errors the bands compare with;
    {} when no clip has ground truth."""
    if not per_clip_errors:
        return {}
    per_clip = [{"clip": clip_id, **clip_medians(e)} for clip_id, e in per_clip_errors.items()]
    return {
        "bands": banded_errors(concat_point_errors(list(per_clip_errors.values()))),
        "per_clip": per_clip,
        "disparity_errors_px": list(DISPARITY_ERRORS_PX),
    }


def ground_truth_accuracy(output: str, data: str, clip_ids: list[str]) -> dict[str, Any]:
    """`run_accuracy` of the clips under the engine output `output` (OUTPUT/npz/<clip>.npz)
    that have synthetic ground truth under `data` (`data/gt/<clip>.npz`); an InputError when
    `data` has no gt/ folder (a mistyped path must not silently drop the section)."""
    if not fs.exists(fs.join(data, "gt")):
        raise InputError(f"--ground-truth {data!r} has no gt/ folder")
    per_clip_errors = {
        clip_id: point_errors(
            read_clip(fs.join(output, NPZ_DIR, f"{clip_id}.npz")), load_ground_truth(data, clip_id)
        )
        for clip_id in clip_ids
        if fs.exists(fs.join(data, "gt", f"{clip_id}.npz"))
    }
    return run_accuracy(per_clip_errors)
