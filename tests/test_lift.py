"""Lifting 2D tracks to 3D, projection, and camera-free motion displacement."""

import math

import numpy as np
import pytest

from s4d_ray.geometry.camera import RectifiedCamera, intrinsics, project_points
from s4d_ray.track.lift import (
    MIN_PROJECTION_DEPTH_M,
    camera_centers,
    lift_tracks,
    motion_displacement,
    query_colours,
    unproject,
)

H = W = 64
HFOV = 60.0
CAMERA = RectifiedCamera(W, HFOV, 0.063)


def project(
    points: np.ndarray, world2camera: np.ndarray, width: int, height: int, hfov_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [N,T,2] px and in-view [N,T] of world points [N,T,3], frame t seen by
    world2camera[t], frame by frame with `project_points`: in view as the reference's
    `world_2_pix_np` (0.5 <= x < W-0.5, 0.5 <= y < H-0.5, depth > 1 cm). An independent
    check of the jitted projection inside `motion_displacement`."""
    k = intrinsics(width, height, hfov_deg)
    xy = np.empty((*points.shape[:2], 2))
    in_view = np.empty(points.shape[:2], bool)
    for t in range(points.shape[1]):
        xy[:, t], z = project_points(points[:, t], world2camera[t], k)
        x, y = xy[:, t, 0], xy[:, t, 1]
        with np.errstate(invalid="ignore"):
            in_view[:, t] = (
                (x >= 0.5) & (y >= 0.5) & (x < width - 0.5) & (y < height - 0.5)
                & (z > MIN_PROJECTION_DEPTH_M)
            )  # fmt: skip
    return xy, in_view


def rotation(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues rotation matrix."""
    angle = np.linalg.norm(axis_angle)
    if angle == 0:
        return np.eye(3)
    k = axis_angle / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def moving_cameras(num_frames: int, seed: int = 0) -> np.ndarray:
    """[T,3,4] world2camera of a camera that pans, tilts and walks sideways."""
    rng = np.random.default_rng(seed)
    cams = []
    for t in range(num_frames):
        rot = rotation(np.array([0.01 * t, 0.02 * t, 0.005 * t]))
        center = np.array([0.05 * t, -0.02 * t, 0.03 * t]) + rng.normal(0, 0.01, 3)
        cams.append(np.concatenate([rot, (-rot @ center)[:, None]], axis=1))
    return np.stack(cams)


def test_intrinsics_principal_point_and_focal():
    k = intrinsics(512, 512, 60.0)
    assert k[0, 2] == 256 and k[1, 2] == 256
    assert k[0, 0] == pytest.approx(256 * math.sqrt(3)) and k[1, 1] == k[0, 0]


def test_unprojection_follows_the_reference_pixel_convention():
    """x = W/2 is the optical axis; x = 0 is the left image edge at tan(hfov/2)."""
    cam = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)[None]
    xy = np.array([[[W / 2, H / 2]], [[0.0, H / 2]]])
    points = unproject(xy.reshape(2, 1, 2), np.full((2, 1), 2.0), cam, W, H, HFOV)
    np.testing.assert_allclose(points[0, 0], [0, 0, 2], atol=1e-12)
    np.testing.assert_allclose(points[1, 0], [-2 * math.tan(math.radians(30)), 0, 2], atol=1e-12)


def test_lift_then_project_round_trips_on_a_non_square_frame():
    """Lifting and projecting share one pinhole (square pixels, focal from the hfov and the
    width): on a 96x48 frame a lifted track projects back onto itself."""
    rng = np.random.default_rng(3)
    width, height, num_frames = 96, 48, 3
    cams = moving_cameras(num_frames)
    depth = rng.uniform(2.0, 10.0, (num_frames, height, width))
    tracks = np.stack(
        [
            rng.uniform(4.0, width - 4.0, (20, num_frames)),
            rng.uniform(4.0, height - 4.0, (20, num_frames)),
        ],
        axis=-1,
    )
    points, valid = lift_tracks(
        tracks, np.ones((20, num_frames), bool), depth, cams, RectifiedCamera(width, HFOV, 0.063)
    )
    assert valid.all()
    xy, in_view = project(points, cams, width, height, HFOV)
    assert in_view.all()
    np.testing.assert_allclose(xy, tracks, atol=1e-9)
    # the vertical focal is the horizontal one: a ray at the top edge is hfov·H/W off axis
    top = unproject(np.array([[[width / 2, 0.0]]]), np.ones((1, 1)), cams[:1], width, height, HFOV)
    camera_point = cams[0, :, :3] @ top[0, 0] + cams[0, :, 3]
    assert camera_point[1] == pytest.approx(-math.tan(math.radians(HFOV / 2)) * height / width)


def test_lift_then_project_recovers_tracks_and_depth():
    rng = np.random.default_rng(1)
    num_tracks, num_frames = 50, 6
    cams = moving_cameras(num_frames)
    depth = rng.uniform(1.0, 15.0, (num_frames, H, W))
    tracks = rng.uniform(1.0, W - 1.0, (num_tracks, num_frames, 2))
    visible = np.ones((num_tracks, num_frames), bool)
    points, valid = lift_tracks(tracks, visible, depth, cams, CAMERA)
    assert valid.all() and points.dtype == np.float64
    xy, in_view = project(points, cams, W, H, HFOV)
    assert in_view.all()
    np.testing.assert_allclose(xy, tracks, atol=1e-9)
    # z in each camera is the depth at the rounded pixel
    cam_z = np.einsum("tj,ntj->nt", cams[:, 2, :3], points) + cams[None, :, 2, 3]
    rows = np.round(tracks[..., 1]).astype(int)
    cols = np.round(tracks[..., 0]).astype(int)
    np.testing.assert_allclose(cam_z, depth[np.arange(num_frames), rows, cols], rtol=1e-12)


def test_lift_validity_rules():
    num_frames = 1
    cams = moving_cameras(num_frames)
    depth = np.full((num_frames, H, W), 5.0)
    depth[0, 10, 10] = 0.0  # invalid depth
    depth[0, 20, 20] = 20.0  # not < 20 m
    depth[0, 30, 31] = 19.99
    depth[0, 0, W - 1] = 3.0
    tracks = np.array(
        [
            [10.2, 9.8],  # rounds to (10, 10): depth 0
            [20.4, 20.4],  # depth 20: invalid
            [30.5, 30.4],  # rounds half to even: x 30.5 → 30, depth 5
            [31.0, 30.0],  # depth 19.99: valid
            [-0.2, 5.0],  # left of the image
            [W - 0.01, 0.0],  # inside, rounds to column W (clipped to W-1)
            [5.0, H + 0.0],  # below the image
            [7.0, 7.0],  # not visible
        ]
    )[:, None, :]
    visible = np.array([True] * 7 + [False])[:, None]
    points, valid = lift_tracks(tracks, visible, depth, cams, CAMERA)
    assert valid[:, 0].tolist() == [False, False, True, True, False, True, False, False]
    cam_z = points[:, 0] @ cams[0, 2, :3] + cams[0, 2, 3]
    assert cam_z[2] == pytest.approx(5.0) and cam_z[3] == pytest.approx(19.99)
    assert cam_z[5] == pytest.approx(3.0)
    assert np.isfinite(points).all()


def test_lift_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        lift_tracks(
            np.zeros((3, 4, 2)),
            np.ones((3, 5), bool),
            np.ones((4, H, W)),
            np.zeros((4, 3, 4)),
            CAMERA,
        )
    with pytest.raises(ValueError, match="64 px wide, the camera 96 px"):
        lift_tracks(
            np.zeros((3, 4, 2)),
            np.ones((3, 4), bool),
            np.ones((4, H, W)),
            np.zeros((4, 3, 4)),
            RectifiedCamera(96, HFOV, 0.063),
        )


def test_project_validity_margins_and_behind_camera():
    cam = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)[None]
    f = intrinsics(W, H, HFOV)[0, 0]
    xs = np.array([0.49, 0.5, W - 0.5, W - 0.51])
    pts = np.stack([(xs - W / 2) / f * 4, np.zeros(4), np.full(4, 4.0)], axis=-1)
    pts = np.concatenate([pts, [[0, 0, -1.0], [0, 0, 0.005]]])[:, None, :]
    xy, ok = project(pts, cam, W, H, HFOV)
    assert ok[:, 0].tolist() == [False, True, False, True, False, False]
    np.testing.assert_allclose(xy[:4, 0, 0], xs, atol=1e-9)


def test_camera_centers():
    cams = moving_cameras(5)
    centers = camera_centers(cams)
    cam_space = np.einsum("tij,tj->ti", cams[:, :, :3], centers) + cams[:, :, 3]
    np.testing.assert_allclose(cam_space, 0, atol=1e-12)


def static_and_moving_scene(num_frames: int):
    """Two world points seen by a moving camera: one fixed, one moving along world x."""
    cams = moving_cameras(num_frames)
    centers = camera_centers(cams)
    forward = cams[:, 2, :3]  # camera z axis in world
    anchor = centers + 6.0 * forward  # 6 m in front of every camera
    static_point = np.repeat(anchor[:1], num_frames, axis=0)
    moving_point = anchor[0] + np.outer(np.arange(num_frames), [0.02, 0.0, 0.0])
    return cams, np.stack([static_point, moving_point])


def test_motion_is_zero_for_static_points_and_matches_brute_force_for_moving():
    num_frames = 24
    cams, points = static_and_moving_scene(num_frames)
    valid = np.ones(points.shape[:2], bool)
    xy, in_view = project(points, cams, W, H, HFOV)
    assert in_view.all()
    motion = motion_displacement(points, valid, cams, CAMERA)
    assert motion.shape == (2, num_frames) and motion.dtype == np.float32
    assert np.abs(motion[0]).max() < 1e-4  # camera motion cancels
    assert motion[1, 0] == 0

    expected = np.zeros(num_frames)
    for t in range(num_frames):
        for s in range(max(0, t - 16), t):
            past, _ = project(points[1:2, s : s + 1], cams[t : t + 1], W, H, HFOV)
            expected[t] = max(expected[t], np.linalg.norm(past[0, 0] - xy[1, t]))
    np.testing.assert_allclose(motion[1], expected, rtol=1e-5)


def test_motion_window_and_validity():
    num_frames = 21
    cams, points = static_and_moving_scene(num_frames)
    valid = np.ones(points.shape[:2], bool)
    full = motion_displacement(points, valid, cams, CAMERA, window=16)
    short = motion_displacement(points, valid, cams, CAMERA, window=2)
    assert (short[1, 3:] < full[1, 3:]).all()

    valid[1, :] = False
    valid[1, [0, 3, 20]] = True  # 3 sees 0; 20 sees nothing within 16 frames (3 is 17 back)
    sparse = motion_displacement(points, valid, cams, CAMERA)
    assert sparse[1, 3] > 0 and sparse[1, 20] == 0
    assert (sparse[1, [0, 1, 2, 4, 5, 19]] == 0).all()
    assert motion_displacement(points, valid, cams, CAMERA, window=3)[1, 3] == sparse[1, 3]
    assert motion_displacement(points, valid, cams, CAMERA, window=2)[1, 3] == 0

    valid[1, :] = False
    valid[1, [4, 20]] = True  # exactly 16 frames back: inside the window
    assert motion_displacement(points, valid, cams, CAMERA)[1, 20] > 0


def test_motion_ignores_pairs_whose_projection_is_invalid():
    """At t = 2 only frame 0 counts once the point at frame 1 is behind camera 2."""
    num_frames = 6
    cams, points = static_and_moving_scene(num_frames)
    valid = np.ones(points.shape[:2], bool)
    points[1, 1] = camera_centers(cams)[2] - 3.0 * cams[2, 2, :3]
    _, in_view = project(points[1:2, 1:2], cams[2:3], W, H, HFOV)
    assert not in_view.any()
    motion = motion_displacement(points, valid, cams, CAMERA)
    now, _ = project(points[1:2, 2:3], cams[2:3], W, H, HFOV)
    past, _ = project(points[1:2, 0:1], cams[2:3], W, H, HFOV)
    assert motion[1, 2] == pytest.approx(np.linalg.norm(past - now), rel=1e-5)
    assert motion[1, 2] > 0


def test_chunking_is_exact():
    rng = np.random.default_rng(3)
    num_frames = 10
    cams = moving_cameras(num_frames)
    depth = rng.uniform(2.0, 10.0, (num_frames, H, W))
    tracks = rng.uniform(-2, W + 2, (300, num_frames, 2))
    visible = rng.uniform(size=(300, num_frames)) > 0.3
    points, valid = lift_tracks(tracks, visible, depth, cams, CAMERA)
    whole = motion_displacement(points, valid, cams, CAMERA)
    points_c, valid_c = lift_tracks(tracks, visible, depth, cams, CAMERA, chunk_size=7)
    chunked = motion_displacement(points_c, valid_c, cams, CAMERA, chunk_size=7)
    np.testing.assert_array_equal(points, points_c)
    np.testing.assert_array_equal(valid, valid_c)
    np.testing.assert_array_equal(whole, chunked)
    assert (whole > 0).any()


def test_query_colours():
    video = np.zeros((3, H, W, 3), np.uint8)
    video[2, 5, 7] = [10, 20, 30]
    video[0, 1, 2] = [1, 2, 3]
    colours = query_colours(video, np.array([[2, 5, 7], [0, 1, 2]]))
    assert colours.tolist() == [[10, 20, 30], [1, 2, 3]] and colours.dtype == np.uint8
