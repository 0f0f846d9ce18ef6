"""Quality checks of one pointmap window (recorded in its `meta.json`, summarised per job).

- **Pose recovery**: each frame's camera recovered from its pointmap alone (PnP on the static
  pixels: SQPnP + orthogonal-iteration Procrustes, `geometry.recover_poses`) against the
  exported poses: ATE after a rigid (SE(3)) alignment, mean rotation error, RPE. On exact
  pointmaps this is ~1e-7 m; a mismatch between depth, intrinsics and poses shows up here.
- **Static pixels**: a pixel of frame t is static when its 3D point, seen from the first camera
  (the world), lands on a valid pixel of frame 0 whose depth agrees within 5 % — moving objects
  and occluded points fail. Frame 0 is static wherever valid.
- **Consistency**: warp frame i's points into frame i+1's camera; per pair the median relative
  error against frame i+1's depth at the landing pixel (over every valid pixel: dynamic pixels
  are a minority the median ignores); reported as the median over pairs and the worst pair.
- **Near/far ratio**: the 95th over the 5th percentile of the points' distance to the first
  camera — Sora3R's stated failure mode is scenes with a large near/far range (the mean-distance
  normalisation squeezes the near structure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from s4d_ray.geometry.pose_metrics import as_matrices, ate_se3, rpe
from s4d_ray.pointmaps.geometry import (
    depth_in_cameras,
    depth_to_pointmaps,
    recover_poses,
    rigid_transform,
)

STATIC_THRESHOLD = 0.05
MIN_STATIC_PIXELS = 64


def project(points: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-frame points [...,3] → (row, col) int pixel indices and z; pixel (c, r) covers
    [c, c+1) × [r, r+1) in K's coordinates (centres at +0.5). Non-positive z gives row −1."""
    z = points[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        col = np.floor(points[..., 0] / z * k[0, 0] + k[0, 2])
        row = np.floor(points[..., 1] / z * k[1, 1] + k[1, 2])
    bad = ~(np.isfinite(col) & np.isfinite(row) & (z > 0))
    return np.where(bad, -1, row).astype(np.int64), np.where(bad, -1, col).astype(np.int64), z


def warp_relative_error(
    points_world: np.ndarray, target_depth: np.ndarray, target_pose: np.ndarray, k: np.ndarray
) -> np.ndarray:
    """|z − D| / D of world points [N,3] seen from a camera (camera2world [4,4]) against that
    camera's depth map [H,W] at the pixel they land on; NaN where they land outside or on an
    invalid pixel."""
    world2camera = np.linalg.inv(target_pose)
    camera = rigid_transform(points_world, world2camera[:3, :3], world2camera[:3, 3])
    row, col, z = project(camera, k)
    height, width = target_depth.shape
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    depth = np.zeros(len(points_world))
    depth[inside] = target_depth[row[inside], col[inside]]
    ok = inside & (depth > 0)
    out = np.full(len(points_world), np.nan)
    out[ok] = np.abs(z[ok] - depth[ok]) / depth[ok]
    return out


def grid_mask(mask: np.ndarray, stride: int) -> np.ndarray:
    """`mask [T,H,W]` kept only on every `stride`-th row and column (the pixels checked)."""
    out = np.zeros_like(mask, dtype=bool)
    out[:, ::stride, ::stride] = mask[:, ::stride, ::stride]
    return out


def static_mask(
    pointmaps: np.ndarray,
    mask: np.ndarray,
    k: np.ndarray,
    threshold: float = STATIC_THRESHOLD,
    stride: int = 1,
) -> np.ndarray:
    """[T,H,W] bool: valid pixels (on the `stride` grid) whose point agrees with the first
    frame's depth (see module docstring). Pointmaps [T,H,W,3] are in the first camera's frame."""
    depth0 = np.where(mask[0], np.asarray(pointmaps[0], np.float64)[..., 2], 0.0)
    checked = grid_mask(mask, stride)
    static = np.zeros_like(mask, dtype=bool)
    static[0] = checked[0]
    for t in range(1, len(pointmaps)):
        index = np.flatnonzero(checked[t])
        error = warp_relative_error(
            np.asarray(pointmaps[t]).reshape(-1, 3)[index].astype(np.float64), depth0, np.eye(4), k
        )
        flat = static[t].reshape(-1)
        flat[index[np.nan_to_num(error, nan=np.inf) < threshold]] = True
    return static


def consistency_errors(
    pointmaps: np.ndarray,
    mask: np.ndarray,
    k: np.ndarray,
    camera2world: np.ndarray,
    stride: int = 1,
) -> np.ndarray:
    """Per consecutive pair (i, i+1): median relative error of frame i's points (on the
    `stride` grid) warped into frame i+1 [T−1] (NaN where none lands on valid depth)."""
    poses = as_matrices(camera2world)
    checked = grid_mask(mask, stride)
    out = []
    for i in range(len(pointmaps) - 1):
        target = np.where(
            mask[i + 1], depth_in_cameras(pointmaps[i + 1 : i + 2], poses[i + 1 : i + 2])[0], 0
        )
        points = np.asarray(pointmaps[i])[checked[i]].astype(np.float64)
        error = warp_relative_error(points, target, poses[i + 1], k)
        out.append(np.nanmedian(error) if np.isfinite(error).any() else np.nan)
    return np.asarray(out)


def near_far_ratio(pointmaps: np.ndarray, mask: np.ndarray) -> float:
    """p95 / p5 of the valid points' distances to the first camera (≥ 1)."""
    distances = np.linalg.norm(np.asarray(pointmaps)[mask], axis=-1)
    if distances.size == 0:
        return float("nan")
    near, far = np.percentile(distances, [5, 95])
    return float(far / near) if near > 0 else float("inf")


def quality_stride(height: int) -> int:
    """Grid stride of the checked pixels: ~128 rows whatever the size (statistics, not maps)."""
    return max(1, height // 128)


def poses_from_pointmaps(pointmaps: np.ndarray, mask: np.ndarray, k: np.ndarray) -> np.ndarray:
    """camera2world [T,4,4] of each frame recovered from pointmaps [T,H,W,3] (first camera's
    frame) and intrinsics alone, on its static pixels (all valid ones where fewer than
    MIN_STATIC_PIXELS are static)."""
    static = static_mask(pointmaps, mask, k, stride=quality_stride(mask.shape[1]))
    use = np.array(
        [s if s.sum() >= MIN_STATIC_PIXELS else m for s, m in zip(static, mask, strict=True)]
    )
    return recover_poses(pointmaps, use, k)


def window_quality(
    depth: np.ndarray, mask: np.ndarray, k: np.ndarray, camera2world: np.ndarray
) -> dict[str, Any]:
    """The checks of the module docstring for one window: depth [T,H,W] m, mask [T,H,W],
    intrinsics [3,3], camera2world [T,4,4] relative to the first camera. JSON-able floats."""
    poses = as_matrices(camera2world)
    pointmaps = depth_to_pointmaps(np.where(mask, depth, 0), k, poses)
    stride = quality_stride(mask.shape[1])
    static = static_mask(pointmaps, mask, k, stride=stride)
    recovered = poses_from_pointmaps(pointmaps, mask, k)
    se3 = ate_se3(recovered, poses)
    rel = rpe(recovered, poses) if len(poses) > 1 else None
    pairs = consistency_errors(pointmaps, mask, k, poses, stride)
    finite = pairs[np.isfinite(pairs)]
    checked = grid_mask(mask, stride)
    return {
        "valid_fraction": float(mask.mean()),
        "static_fraction": float(static.sum() / max(checked.sum(), 1)),
        "pose_ate_m": se3.rmse,
        "pose_rotation_deg": se3.rotation_deg,
        "pose_rpe_m": rel.translation_rmse if rel else 0.0,
        "consistency_rel_median": float(np.median(finite)) if finite.size else float("nan"),
        "consistency_rel_worst_pair": float(finite.max()) if finite.size else float("nan"),
        "near_far_ratio": near_far_ratio(pointmaps, checked),
    }
