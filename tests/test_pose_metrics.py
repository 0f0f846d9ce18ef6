"""Pose metrics: Umeyama, ATE (SE(3), Sim(3)), RPE and rotation errors on known transforms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from s4d_ray.geometry.pose_metrics import (
    as_matrices,
    ate_se3,
    ate_sim3,
    relative_eye_rotation_error_deg,
    rotation_angle_deg,
    rpe,
    umeyama,
)


def trajectory(num_frames: int = 40, seed: int = 0) -> np.ndarray:
    """A smooth camera2world [T,3,4] trajectory (walk forward, sway, yaw/pitch)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2, num_frames)
    centres = np.stack([0.1 * np.sin(2 * t), 0.03 * np.sin(5 * t), 0.7 * t], axis=1)
    angles = np.stack([0.05 * np.sin(1.3 * t), 0.1 * np.sin(t), 0.02 * t], axis=1)
    rots = Rotation.from_rotvec(angles + rng.normal(0, 1e-3, angles.shape)).as_matrix()
    return np.concatenate([rots, centres[:, :, None]], axis=2)


def transform(poses: np.ndarray, rot: np.ndarray, trans: np.ndarray, scale: float) -> np.ndarray:
    """Apply x ↦ s·R·x + t to camera2world poses (a change of world frame and unit)."""
    out = np.array(poses, dtype=np.float64)
    out[:, :, :3] = rot @ out[:, :, :3]
    out[:, :, 3] = scale * out[:, :, 3] @ rot.T + trans
    return out


def test_umeyama_recovers_known_similarity() -> None:
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    rot = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    trans = np.array([1.0, -2.0, 0.5])
    dst = 1.7 * src @ rot.T + trans
    sim = umeyama(src, dst, with_scale=True)
    np.testing.assert_allclose(sim.rotation, rot, atol=1e-12)
    np.testing.assert_allclose(sim.translation, trans, atol=1e-12)
    assert sim.scale == pytest.approx(1.7, abs=1e-12)
    rigid = umeyama(src, src @ rot.T + trans, with_scale=False)
    np.testing.assert_allclose(rigid.rotation, rot, atol=1e-12)
    assert rigid.scale == 1.0


def test_umeyama_never_returns_a_reflection() -> None:
    rng = np.random.default_rng(2)
    src = rng.normal(size=(30, 3))
    mirrored = src * np.array([1.0, 1.0, -1.0])
    sim = umeyama(src, mirrored, with_scale=False)
    assert np.linalg.det(sim.rotation) == pytest.approx(1.0)


def test_noise_free_ate_is_zero_under_any_rigid_change_of_world() -> None:
    gt = trajectory()
    rot = Rotation.from_rotvec([0.4, 0.2, -2.0]).as_matrix()
    est = transform(gt, rot, np.array([3.0, 1.0, -4.0]), 1.0)
    se3 = ate_se3(est, gt)
    assert se3.rmse < 1e-10 and se3.max < 1e-10
    assert se3.rotation_deg < 1e-6
    assert ate_sim3(est, gt).scale_error == pytest.approx(0.0, abs=1e-10)
    assert rpe(est, gt).translation_rmse < 1e-10


def test_known_scale_error_is_reported_and_counted_by_the_metric_ate() -> None:
    gt = trajectory()
    est = transform(gt, np.eye(3), np.zeros(3), 1.02)  # trajectory 2 % too large
    sim3 = ate_sim3(est, gt)
    assert sim3.scale_error == pytest.approx(0.02, abs=1e-10)
    assert sim3.rmse < 1e-10
    se3 = ate_se3(est, gt)
    assert se3.rmse > 0.005  # the metric ATE sees the wrong scale
    assert se3.scale_error == 0.0
    shrunk = ate_sim3(transform(gt, np.eye(3), np.zeros(3), 0.95), gt)
    assert shrunk.scale_error == pytest.approx(-0.05, abs=1e-10)


def test_ate_of_a_known_offset() -> None:
    gt = trajectory(num_frames=20)
    est = np.array(gt)
    est[::2, :, 3] += np.array([0.0, 0.0, 0.01])  # every other frame 1 cm forward
    est[1::2, :, 3] -= np.array([0.0, 0.0, 0.01])  # the others 1 cm back
    result = ate_se3(est, gt)
    assert result.rmse == pytest.approx(0.01, rel=0.05)


def test_rpe_sees_one_bad_step() -> None:
    gt = trajectory(num_frames=10)
    est = np.array(gt)
    est[5:, :, 3] += np.array([0.05, 0.0, 0.0])  # a 5 cm jump between frames 4 and 5
    result = rpe(est, gt)
    assert result.pairs == 9
    assert result.translation_mean == pytest.approx(0.05 / 9, rel=1e-6)
    turned = np.array(gt)
    turned[3:, :, :3] = Rotation.from_rotvec([0, np.radians(2.0), 0]).as_matrix() @ gt[3:, :, :3]
    turned[3:, :, 3] = gt[3:, :, 3]
    assert rpe(turned, gt).rotation_mean_deg == pytest.approx(2.0 / 9, rel=1e-3)


def test_rotation_angle_is_precise_for_tiny_angles() -> None:
    rot = Rotation.from_rotvec([0.0, 0.0, np.radians(0.01)]).as_matrix()
    assert rotation_angle_deg(np.eye(3), rot) == pytest.approx(0.01, rel=1e-6)
    assert rotation_angle_deg(rot, rot) == pytest.approx(0.0, abs=1e-9)


def test_relative_eye_rotation_error_ignores_the_gauge() -> None:
    rng = np.random.default_rng(3)
    rig = Rotation.from_rotvec(rng.normal(0, 0.01, (2, 3))).as_matrix()
    gauge = Rotation.from_rotvec([0.02, 0.0, 0.0]).as_matrix()
    assert relative_eye_rotation_error_deg(rig @ gauge, rig) < 1e-9
    bent = np.array(rig)
    bent[1] = rig[1] @ Rotation.from_rotvec([0, 0, np.radians(0.05)]).as_matrix()
    assert relative_eye_rotation_error_deg(bent, rig) == pytest.approx(0.05, rel=1e-6)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="T,3,4"):
        as_matrices(np.zeros((5, 3, 3)))
    bad = trajectory(num_frames=5)
    bad[2, 0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ate_se3(bad, trajectory(num_frames=5))
    with pytest.raises(ValueError, match="length"):
        ate_se3(trajectory(num_frames=5), trajectory(num_frames=6))
    still = np.tile(np.eye(4)[:3], (5, 1, 1))
    with pytest.raises(ValueError, match="does not move"):
        ate_sim3(still, still)


def test_rotation_error_on_a_straight_trajectory_uses_the_orientations() -> None:
    gt = trajectory()
    gt[:, :, 3] = np.linspace(0, 1, len(gt))[:, None] * np.array([0.0, 0.0, 1.0])  # a line
    est = transform(gt, Rotation.from_rotvec([0.0, 0.0, 0.3]).as_matrix(), np.zeros(3), 1.0)
    assert ate_se3(est, gt).rotation_deg < 1e-6  # a turn about the line is not an error
    bent = np.array(est)  # one of 40 frames turned by 1°: best common rotation 1°/40
    bent[7, :, :3] = Rotation.from_rotvec([np.radians(1.0), 0, 0]).as_matrix() @ bent[7, :, :3]
    assert ate_se3(bent, gt).rotation_deg == pytest.approx(1.0 * 78 / 1600, rel=0.02)
