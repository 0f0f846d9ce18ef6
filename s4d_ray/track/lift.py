"""Stage 5: lift 2D tracks to 3D with stereo depth, and measure camera-free 2D motion.

Camera model of the rectified left eye, as in the Stereo4D reference (`utils.CameraAZ` with the
intrinsics of `segmentation.load_rgbd_cam_from_pkl`): normalised focal f = 0.5 / tan(hfov/2)
for both axes (fx = f·W, fy = f·H), principal point at (W/2, H/2); a pixel coordinate x maps to
the camera ray (x/W − 0.5)/f, i.e. pixel i covers [i, i+1) with its centre at i + 0.5. Depth is
looked up at the rounded pixel (np.round, half to even), clipped into the image.
World→camera extrinsics are [T,3,4] matrices [R|t] (x_cam = R·x_world + t).
"""

from __future__ import annotations

import math

import numpy as np

from s4d_ray.geometry.camera import intrinsics

MIN_VALID_DEPTH_M = 0.0
MAX_VALID_DEPTH_M = 20.0
MIN_PROJECTION_DEPTH_M = 0.01
MOTION_WINDOW = 16
CHUNK_TRACKS = 4096


def normalized_focal(hfov_deg: float) -> float:
    """Focal length as a fraction of the image size: 0.5 / tan(hfov/2)."""
    return 0.5 / math.tan(math.radians(hfov_deg / 2.0))


def camera_centers(world2camera: np.ndarray) -> np.ndarray:
    """[T,3] camera centres in world coordinates (−Rᵀt) from world2camera [T,3,4]."""
    rot = world2camera[:, :, :3]
    trans = world2camera[:, :, 3]
    return -np.einsum("tji,tj->ti", rot, trans)


def _to_world(xyz_cam: np.ndarray, world2camera: np.ndarray) -> np.ndarray:
    """Camera-frame points [N,T,3] → world points [N,T,3], frame t using world2camera[t]."""
    rot = world2camera[:, :, :3]
    trans = world2camera[:, :, 3]
    time_major = np.swapaxes(xyz_cam, 0, 1) - trans[:, None, :]
    return np.swapaxes(np.matmul(time_major, rot), 0, 1)


def unproject(
    xy: np.ndarray,
    depth: np.ndarray,
    world2camera: np.ndarray,
    width: int = 512,
    height: int = 512,
    hfov_deg: float = 60.0,
) -> np.ndarray:
    """World points [N,T,3] m of pixels `xy [N,T,2]` px at z-depth `depth [N,T]` m.

    Frame t uses world2camera[t] ([T,3,4]); x_cam = depth·((x/W − 0.5)/f, (y/H − 0.5)/f, 1).
    """
    focal = normalized_focal(hfov_deg)
    x_cam = (xy[..., 0] / width - 0.5) / focal
    y_cam = (xy[..., 1] / height - 0.5) / focal
    xyz_cam = np.stack([x_cam, y_cam, np.ones_like(x_cam)], axis=-1) * depth[..., None]
    return _to_world(xyz_cam, world2camera)


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


def project(
    points: np.ndarray,
    world2camera: np.ndarray,
    width: int = 512,
    height: int = 512,
    hfov_deg: float = 60.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Project track points [N,T,3] m (world) with each frame's camera `world2camera [T,3,4]`.

    Returns xy [N,T,2] px and valid [N,T] bool (in front of the camera by > 1 cm and inside the
    image with a half-pixel margin, as the reference's `world_2_pix_np`).
    """
    return _project(points, world2camera, width, height, hfov_deg)


def lift_tracks(
    tracks_2d: np.ndarray,
    visible: np.ndarray,
    depth: np.ndarray,
    world2camera: np.ndarray,
    hfov_deg: float = 60.0,
    chunk_size: int = CHUNK_TRACKS,
) -> tuple[np.ndarray, np.ndarray]:
    """Lift 2D tracks to world space with per-frame depth maps (reference `Track3d.__init__`).

    Args:
        tracks_2d: [N,T,2] px (x, y).
        visible: [N,T] bool, 2D tracker visibility.
        depth: [T,H,W] m, 0 where invalid.
        world2camera: [T,3,4] extrinsics of the rectified left eye.
        hfov_deg: horizontal field of view.
        chunk_size: tracks per vectorised step (bounds temporary memory).

    Returns:
        points [N,T,3] float64 m (world; computed for every point, meaningful where valid),
        valid [N,T] bool: visible, 0 <= x < W, 0 <= y < H and 0 < depth < 20 m.
    """
    num_tracks, num_frames = visible.shape
    if tracks_2d.shape != (num_tracks, num_frames, 2):
        raise ValueError(f"tracks_2d {tracks_2d.shape} does not match visible {visible.shape}")
    if depth.shape[0] != num_frames or world2camera.shape != (num_frames, 3, 4):
        raise ValueError(
            f"depth {depth.shape} / world2camera {world2camera.shape} do not have T={num_frames}"
        )
    height, width = depth.shape[1:]
    points = np.empty((num_tracks, num_frames, 3), dtype=np.float64)
    valid = np.empty((num_tracks, num_frames), dtype=bool)
    frame = np.arange(num_frames)[None, :]
    for begin in range(0, num_tracks, chunk_size):
        chunk = slice(begin, begin + chunk_size)
        xy = np.asarray(tracks_2d[chunk], dtype=np.float64)
        finite = np.isfinite(xy).all(axis=-1)
        xy = np.where(finite[..., None], xy, 0.0)
        col = np.clip(np.round(xy[..., 0]).astype(np.int64), 0, width - 1)
        row = np.clip(np.round(xy[..., 1]).astype(np.int64), 0, height - 1)
        point_depth = depth[frame, row, col].astype(np.float64)
        inside = (
            finite
            & (xy[..., 0] >= 0)
            & (xy[..., 1] >= 0)
            & (xy[..., 0] < width)
            & (xy[..., 1] < height)
        )
        valid[chunk] = (
            np.asarray(visible[chunk], dtype=bool)
            & inside
            & (point_depth > MIN_VALID_DEPTH_M)
            & (point_depth < MAX_VALID_DEPTH_M)
        )
        points[chunk] = unproject(xy, point_depth, world2camera, width, height, hfov_deg)
    return points, valid


def motion_displacement(
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


def query_colours(video: np.ndarray, query_points: np.ndarray) -> np.ndarray:
    """Colour [N,3] uint8 of each track at its query point (reference `Track3d` colours).

    video: [T,H,W,3] uint8. query_points: [N,3] (t, y, x), truncated to integers.
    """
    query = np.asarray(query_points)
    frame = query[:, 0].astype(np.int64)
    row = query[:, 1].astype(np.int64)
    col = query[:, 2].astype(np.int64)
    return np.asarray(video[frame, row, col], dtype=np.uint8)
