"""Accuracy of the engine's 3D tracks against synthetic ground truth.

For every output track, the surface point it starts on is found by casting the ray through its
projection at its first stored frame into the exact synthetic scene; that point's true
trajectory is then compared with the track at every stored frame. The error therefore includes
depth errors and 2D tracking drift alike (metres, reported in cm).
"""

from __future__ import annotations

import json

import numpy as np

from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, intrinsics, project_points
from s4d_ray.io.clip_io import ClipRecord
from s4d_ray.synthetic.synth import Ellipsoid, scene_of


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


def evaluate_clip(record: ClipRecord, ground_truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Median 3D track error (cm) over stored points, static and moving, and tracks kept."""
    truth, moving = true_trajectories(record, ground_truth)
    dense = record.dense_tracks()
    stored = np.isfinite(dense[..., 0]) & np.isfinite(truth[..., 0])
    error_cm = 100 * np.linalg.norm(dense - truth, axis=-1)
    metadata = json.loads(str(record.extras.get("metadata", "{}")))
    tracked = metadata.get("tracks_tracked", record.num_tracks)

    def median(mask: np.ndarray) -> float:
        return float(np.median(error_cm[mask])) if mask.any() else float("nan")

    k = intrinsics(512, 512, RECTIFIED_HFOV_DEG)
    w2c = record.world2camera()
    depth_err = []
    for t in range(record.num_frames):
        sel = stored[:, t]
        _, z_out = project_points(dense[sel, t], w2c[t], k)
        _, z_true = project_points(truth[sel, t], w2c[t], k)
        depth_err.append(np.abs(z_out - z_true) / z_true)
    depth_rel = np.concatenate(depth_err) if depth_err else np.zeros(0)
    return {
        "tracks": int(record.num_tracks),
        "fraction_kept": float(record.num_tracks / tracked) if tracked else 0.0,
        "points": int(stored.sum()),
        "median_error_cm": median(stored),
        "median_error_static_cm": median(stored & ~moving[:, None]),
        "median_error_moving_cm": median(stored & moving[:, None]),
        "median_relative_depth_error": float(np.median(depth_rel))
        if depth_rel.size
        else float("nan"),
    }
