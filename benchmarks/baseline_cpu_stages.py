"""The CPU stages as they were before issue 15, for `bench_cpu_stages` to run side by side.

`baseline_motion_displacement` is the numpy formulation of `s4d_ray.track.lift.motion_displacement`
(one unfused array pass per operation, float64) as of the commit before the JAX kernel; the
optimiser's former behaviour is reproduced by `optimize_clips(crop_spans=False,
max_chunk_elements=1 << 13, autodiff=True)` in a process without the persistent compilation
cache.
"""

from __future__ import annotations

import numpy as np

from s4d_ray.geometry.camera import intrinsics

MIN_PROJECTION_DEPTH_M = 0.01
MOTION_WINDOW = 16
CHUNK_TRACKS = 4096


def _project(
    points: np.ndarray, world2camera: np.ndarray, width: int, height: int, hfov_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [N,T,2] px and validity [N,T] of `points [N,T,3]`, frame t seen by world2camera[t].

    Valid as in the reference's `world_2_pix_np`: 0.5 <= x < W−0.5, 0.5 <= y < H−0.5 and
    depth > 0.01 m.
    """
    projection = intrinsics(width, height, hfov_deg) @ world2camera
    time_major = np.matmul(np.swapaxes(points, 0, 1), np.swapaxes(projection[:, :, :3], 1, 2))
    homogeneous = np.swapaxes(time_major + projection[:, None, :, 3], 0, 1)
    depth = homogeneous[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = homogeneous[..., :2] / depth[..., None]
        valid = (
            (xy[..., 0] >= 0.5)
            & (xy[..., 1] >= 0.5)
            & (xy[..., 0] < width - 0.5)
            & (xy[..., 1] < height - 0.5)
            & (depth > MIN_PROJECTION_DEPTH_M)
        )
    return xy, valid


def baseline_motion_displacement(
    points: np.ndarray,
    valid: np.ndarray,
    world2camera: np.ndarray,
    width: int = 512,
    height: int = 512,
    hfov_deg: float = 60.0,
    window: int = MOTION_WINDOW,
    chunk_size: int = CHUNK_TRACKS,
) -> np.ndarray:
    """Max 2D scene motion of each track over the previous `window` frames, camera-free.

    At frame t, every earlier frame s in [t−window, t) is projected with frame t's camera, and
    the largest pixel distance to the projection of the point at t is kept; pairs count only
    where both points are valid and both projections are valid (reference
    `get_scene_motion_2d_displacement`). Static world points give ~0 whatever the camera does.

    Args:
        points: [N,T,3] m world. valid: [N,T] bool. world2camera: [T,3,4].
        chunk_size: tracks per vectorised step (bounds temporary memory).

    Returns:
        motion [N,T] float32 px, 0 where there is no valid earlier frame (always at t = 0).
    """
    num_tracks, num_frames = valid.shape
    motion = np.zeros((num_tracks, num_frames), dtype=np.float32)
    for start in range(0, num_tracks, chunk_size):
        chunk = slice(start, start + chunk_size)
        chunk_points = np.asarray(points[chunk], dtype=np.float64)
        chunk_valid = np.asarray(valid[chunk], dtype=bool)
        xy_now, proj_ok = _project(chunk_points, world2camera, width, height, hfov_deg)
        ok_now = proj_ok & chunk_valid
        chunk_motion = np.zeros(chunk_valid.shape, dtype=np.float64)
        for lag in range(1, min(window, num_frames - 1) + 1):
            xy_past, proj_past_ok = _project(
                chunk_points[:, :-lag], world2camera[lag:], width, height, hfov_deg
            )
            pair_ok = proj_past_ok & chunk_valid[:, :-lag] & ok_now[:, lag:]
            with np.errstate(invalid="ignore"):
                distance = np.linalg.norm(xy_past - xy_now[:, lag:], axis=-1)
            np.maximum(
                chunk_motion[:, lag:], np.where(pair_ok, distance, 0.0), out=chunk_motion[:, lag:]
            )
        motion[chunk] = chunk_motion
    return motion
