"""Camera-trajectory and rig metrics: Umeyama alignment, ATE (SE(3) and Sim(3)), RPE, rotation error.

Poses are camera2world, [T,3,4] or [T,4,4] (rotation world←camera, camera centre in metres).
Written here rather than taken from `evo` (GPL). Definitions follow the usual benchmark ones
(TUM RGB-D / EuRoC):

- ATE: align the estimated camera centres to the ground-truth ones with the least-squares
  similarity (Umeyama 1991) — rigid for SE(3), the metric ATE (a wrong scale is an error), or
  with a scale for Sim(3) — then the RMSE of the centre distances (m). The Sim(3) scale `s`
  maps the estimate onto the ground truth; `scale_error = 1/s − 1` is how much larger (+) or
  smaller (−) the estimated trajectory is than the true one (0.02 = 2 % too large).
- RPE: for frame pairs (i, i+Δ), the relative motion error E = (G_i⁻¹ G_{i+Δ})⁻¹ (P_i⁻¹ P_{i+Δ});
  translation error ‖t(E)‖ (m) and rotation error angle(R(E)) (degrees). Needs no alignment.
- Rotation angle error: the angle of R_a⁻¹ R_b, degrees.
- Rig: relative eye rotation error between two `rectified2rig [2,3,3]` estimates, the angle
  between their left-eye←right-eye rotations R_L R_Rᵀ, which does not depend on the gauge (a
  rotation common to both eyes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_VARIANCE = 1e-18
"""Camera-centre variance (m²) below which a trajectory counts as not moving (static camera):
its Sim(3) alignment is undefined (`umeyama` raises ValueError, never divides by 0)."""


def as_matrices(poses: np.ndarray) -> np.ndarray:
    """camera2world [T,3,4] or [T,4,4] → float64 [T,4,4]; rejects other shapes and non-finite."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"poses must be [T,3,4] or [T,4,4], got {poses.shape}")
    if not np.isfinite(poses).all():
        raise ValueError("poses contain NaN or inf")
    out = np.tile(np.eye(4), (poses.shape[0], 1, 1))
    out[:, :3, :] = poses[:, :3, :]
    return out


def rotation_angle_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """Angle (degrees) of R_aᵀ R_b for rotations [...,3,3]: 0 when they are equal."""
    rel = np.swapaxes(np.asarray(rot_a, np.float64), -1, -2) @ np.asarray(rot_b, np.float64)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    # arccos is ill-conditioned near 0: use atan2(‖skew‖, cos) for precision on tiny angles
    skew = np.stack(
        [
            rel[..., 2, 1] - rel[..., 1, 2],
            rel[..., 0, 2] - rel[..., 2, 0],
            rel[..., 1, 0] - rel[..., 0, 1],
        ],
        axis=-1,
    )
    sin = np.linalg.norm(skew, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


@dataclass(frozen=True)
class Similarity:
    """x ↦ scale · rotation @ x + translation."""

    rotation: np.ndarray
    translation: np.ndarray
    scale: float

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """Transform points [...,3]."""
        return self.scale * points @ self.rotation.T + self.translation

    def apply_poses(self, poses: np.ndarray) -> np.ndarray:
        """Transform camera2world poses [T,4,4]: rotations rotated, centres transformed."""
        out = as_matrices(poses).copy()
        out[:, :3, :3] = self.rotation @ out[:, :3, :3]
        out[:, :3, 3] = self.apply_points(out[:, :3, 3])
        return out


def umeyama(source: np.ndarray, target: np.ndarray, with_scale: bool) -> Similarity:
    """Least-squares similarity (Umeyama 1991) with target ≈ s·R·source + t, points [N,3].

    `with_scale=False` fixes s = 1 (rigid, SE(3)). Needs N ≥ 3 points not all coincident; for
    collinear points the rotation about the line is arbitrary (the fitted points are not).
    With a scale, either trajectory standing still (a static camera) or a non-positive
    scale is a ValueError: Sim(3) is undefined there, and SE(3) / RPE still are.
    """
    src = np.asarray(source, np.float64)
    dst = np.asarray(target, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"source and target must both be [N,3], got {src.shape}, {dst.shape}")
    if src.shape[0] < 2:
        raise ValueError(f"alignment needs at least 2 points, got {src.shape[0]}")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = (src_c**2).sum() / src.shape[0]
    var_dst = (dst_c**2).sum() / dst.shape[0]
    if with_scale and min(var_src, var_dst) <= MIN_VARIANCE:
        # the best similarity onto (or from) a single point has scale 0 (or infinite): no
        # meaningful Sim(3) ATE or scale error — a per-clip error, never a division by zero
        which = "estimated" if var_src <= MIN_VARIANCE else "ground-truth"
        raise ValueError(
            f"Sim(3) alignment is undefined: the {which} camera does not move (static camera)"
        )
    cov = dst_c.T @ src_c / src.shape[0]
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / var_src) if with_scale else 1.0
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(
            f"Sim(3) alignment is undefined: scale {scale} (the trajectories are uncorrelated)"
        )
    trans = mu_dst - scale * rot @ mu_src
    return Similarity(rotation=rot, translation=trans, scale=scale)


def orientation_alignment(rot_estimate: np.ndarray, rot_truth: np.ndarray) -> np.ndarray:
    """Rotation A [3,3] minimising Σ‖A·R_est,t − R_gt,t‖_F over rotations [T,3,3] (Procrustes).

    Used for the rotation error: the position alignment leaves the rotation about a straight
    trajectory's line undetermined, the orientations do not.
    """
    u, _, vt = np.linalg.svd(np.einsum("tij,tkj->ik", rot_truth, rot_estimate))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ sign @ vt


@dataclass(frozen=True)
class ATEResult:
    """Absolute trajectory error after alignment.

    rmse / mean / median / max: camera-centre distances (m); rotation_deg: mean rotation angle
    error (degrees) after the best common rotation of the orientations (`orientation_alignment`); scale: the alignment's scale (1 for SE(3)); scale_error:
    1/scale − 1 (relative size error of the estimate); alignment: the fitted similarity.
    """

    rmse: float
    mean: float
    median: float
    max: float
    rotation_deg: float
    scale: float
    scale_error: float
    alignment: Similarity


def ate(estimate: np.ndarray, ground_truth: np.ndarray, with_scale: bool = False) -> ATEResult:
    """ATE of camera2world `estimate` vs `ground_truth` (each [T,3,4] or [T,4,4], same T).

    `with_scale=False`: SE(3) alignment — metric ATE; `True`: Sim(3) (Umeyama) with the scale
    error reported.
    """
    est, gt = as_matrices(estimate), as_matrices(ground_truth)
    if est.shape != gt.shape:
        raise ValueError(f"estimate {est.shape} and ground truth {gt.shape} differ in length")
    align = umeyama(est[:, :3, 3], gt[:, :3, 3], with_scale)
    aligned = align.apply_poses(est)
    err = np.linalg.norm(aligned[:, :3, 3] - gt[:, :3, 3], axis=1)
    rot_err = rotation_angle_deg(
        orientation_alignment(est[:, :3, :3], gt[:, :3, :3]) @ est[:, :3, :3], gt[:, :3, :3]
    )
    return ATEResult(
        rmse=float(np.sqrt(np.mean(err**2))),
        mean=float(err.mean()),
        median=float(np.median(err)),
        max=float(err.max()),
        rotation_deg=float(rot_err.mean()),
        scale=align.scale,
        scale_error=float(1.0 / align.scale - 1.0),
        alignment=align,
    )


def ate_se3(estimate: np.ndarray, ground_truth: np.ndarray) -> ATEResult:
    """Metric ATE: rigid (SE(3)) alignment, no scale."""
    return ate(estimate, ground_truth, with_scale=False)


def ate_sim3(estimate: np.ndarray, ground_truth: np.ndarray) -> ATEResult:
    """ATE after Sim(3) (Umeyama) alignment; `scale_error` is the estimate's relative size error."""
    return ate(estimate, ground_truth, with_scale=True)


@dataclass(frozen=True)
class RPEResult:
    """Relative pose error over frame pairs (i, i+delta): translation (m) and rotation (deg)."""

    translation_rmse: float
    translation_mean: float
    rotation_rmse_deg: float
    rotation_mean_deg: float
    pairs: int


def rpe(estimate: np.ndarray, ground_truth: np.ndarray, delta: int = 1) -> RPEResult:
    """RPE between frames `delta` apart (default consecutive frames); no alignment needed."""
    est, gt = as_matrices(estimate), as_matrices(ground_truth)
    if est.shape != gt.shape:
        raise ValueError(f"estimate {est.shape} and ground truth {gt.shape} differ in length")
    if delta < 1 or delta >= est.shape[0]:
        raise ValueError(f"delta must be in [1, T), got {delta} for T = {est.shape[0]}")
    rel_est = np.linalg.inv(est[:-delta]) @ est[delta:]
    rel_gt = np.linalg.inv(gt[:-delta]) @ gt[delta:]
    err = np.linalg.inv(rel_gt) @ rel_est
    trans = np.linalg.norm(err[:, :3, 3], axis=1)
    rot = rotation_angle_deg(np.eye(3), err[:, :3, :3])
    return RPEResult(
        translation_rmse=float(np.sqrt(np.mean(trans**2))),
        translation_mean=float(trans.mean()),
        rotation_rmse_deg=float(np.sqrt(np.mean(rot**2))),
        rotation_mean_deg=float(rot.mean()),
        pairs=int(trans.size),
    )


def relative_eye_rotation_error_deg(
    rectified2rig_estimate: np.ndarray, rectified2rig_truth: np.ndarray
) -> float:
    """Angle (deg) between the left←right eye rotations R_L R_Rᵀ of two `rectified2rig [2,3,3]`.

    Invariant to the gauge (a rotation applied to the rectified frame of both eyes).
    """
    est = np.asarray(rectified2rig_estimate, np.float64)
    gt = np.asarray(rectified2rig_truth, np.float64)
    if est.shape != (2, 3, 3) or gt.shape != (2, 3, 3):
        raise ValueError(f"rectified2rig must be [2,3,3], got {est.shape}, {gt.shape}")
    return float(rotation_angle_deg(est[0] @ est[1].T, gt[0] @ gt[1].T))


def pose_report(estimate: np.ndarray, ground_truth: np.ndarray) -> dict[str, float]:
    """Flat summary of one trajectory comparison (for tables and failure messages)."""
    se3, sim3 = ate_se3(estimate, ground_truth), ate_sim3(estimate, ground_truth)
    rel = rpe(estimate, ground_truth)
    return {
        "ate_se3_m": se3.rmse,
        "ate_sim3_m": sim3.rmse,
        "scale_error": sim3.scale_error,
        "rotation_deg": se3.rotation_deg,
        "rpe_translation_m": rel.translation_rmse,
        "rpe_rotation_deg": rel.rotation_rmse_deg,
        "frames": float(as_matrices(estimate).shape[0]),
    }
