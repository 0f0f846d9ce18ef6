"""The lift stage: lift 2D tracks to 3D with stereo depth, and measure camera-free 2D motion.

Camera model of the rectified left eye: `s4d_ray.geometry.camera.intrinsics`, the one pinhole
convention of the package, both ways (lifting and projecting): square pixels, fx = fy =
W / (2·tan(hfov/2)) from the horizontal field of view, principal point at (W/2, H/2); a pixel
coordinate x maps to the camera ray (x − W/2)/fx, i.e. pixel i covers [i, i+1) with its centre
at i + 0.5. On the square rectified frames this is the Stereo4D reference's normalised focal
0.5 / tan(hfov/2) on both axes. Depth is looked up at the rounded pixel (np.round, half to
even), clipped into the image.
World→camera extrinsics are [T,3,4] matrices [R|t] (x_cam = R·x_world + t).
"""

from __future__ import annotations

import math

import numpy as np

from s4d_ray.geometry.camera import RectifiedCamera

MIN_VALID_DEPTH_M = 0.0
MAX_VALID_DEPTH_M = 20.0
MIN_PROJECTION_DEPTH_M = 0.01
MOTION_WINDOW = 16
CHUNK_TRACKS = 4096
MOTION_CHUNK_TRACKS = 256
"""Tracks per jitted motion call: its ~10 live [n,T] float64 planes stay in cache."""


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
    width: int,
    height: int,
    hfov_deg: float,
) -> np.ndarray:
    """World points [N,T,3] m of pixels `xy [N,T,2]` px at z-depth `depth [N,T]` m, seen in
    frames `width` x `height` px with a horizontal field of view of `hfov_deg` degrees.

    Frame t uses world2camera[t] ([T,3,4]); x_cam = depth·((x − cx)/fx, (y − cy)/fy, 1) with
    the camera of `geometry.camera.intrinsics` (fx = fy = f·W, f = 0.5 / tan(hfov/2)),
    written in normalised coordinates so that square frames give the same bits as before.
    """
    focal = 0.5 / math.tan(math.radians(hfov_deg / 2.0))  # fx / W
    aspect = height / width  # 1.0 on the square rectified frames: fy / H = focal / aspect
    x_cam = (xy[..., 0] / width - 0.5) / focal
    y_cam = (xy[..., 1] / height - 0.5) / (focal / aspect)
    xyz_cam = np.stack([x_cam, y_cam, np.ones_like(x_cam)], axis=-1) * depth[..., None]
    return _to_world(xyz_cam, world2camera)


def lift_tracks(
    tracks_2d: np.ndarray,
    visible: np.ndarray,
    depth: np.ndarray,
    world2camera: np.ndarray,
    camera: RectifiedCamera,
    chunk_size: int = CHUNK_TRACKS,
) -> tuple[np.ndarray, np.ndarray]:
    """Lift 2D tracks to world space with per-frame depth maps (reference `Track3d.__init__`).

    Args:
        tracks_2d: [N,T,2] px (x, y).
        visible: [N,T] bool, 2D tracker visibility.
        depth: [T,H,W] m, 0 where invalid.
        world2camera: [T,3,4] extrinsics of the rectified left eye.
        camera: the clip's rectified camera; its focal length from `size_px` (the frames'
            width, checked) and `hfov_deg`, the principal point at the frame's centre.
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
    if width != camera.size_px:
        raise ValueError(f"depth is {width} px wide, the camera {camera.size_px} px")
    points = np.empty((num_tracks, num_frames, 3), dtype=np.float64)
    valid = np.empty((num_tracks, num_frames), dtype=bool)
    frame = np.arange(num_frames)[None, :]
    for begin in range(0, num_tracks, chunk_size):
        chunk = slice(begin, begin + chunk_size)
        xy = np.asarray(tracks_2d[chunk], dtype=np.float64)
        finite = np.all(np.isfinite(xy), axis=-1)
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
        points[chunk] = unproject(xy, point_depth, world2camera, width, height, camera.hfov_deg)
    return points, valid


def motion_displacement(
    points: np.ndarray,
    valid: np.ndarray,
    world2camera: np.ndarray,
    camera: RectifiedCamera,
    window: int = MOTION_WINDOW,
    chunk_size: int = MOTION_CHUNK_TRACKS,
) -> np.ndarray:
    """Max 2D scene motion of each track over the previous `window` frames, camera-free.

    At frame t, every earlier frame s in [t−window, t) is projected with frame t's camera, and
    the largest pixel distance to the projection of the point at t is kept; pairs count only
    where both points are valid and both projections are valid (reference
    `get_scene_motion_2d_displacement`). Static world points give ~0 whatever the camera does.

    One fused XLA loop per lag (JAX, float64, `_motion_chunk`) over chunks of `chunk_size`
    tracks, frames padded to the optimiser's buckets, so a process compiles once per bucket
    (and, with the persistent compilation cache, once per machine). It agrees with the
    former unfused numpy formulation (`benchmarks/bench_cpu_stages.py` runs it from git
    history) to float64 rounding (identical float32 results on a 40k x 200 clip).

    Args:
        points: [N,T,3] m world. valid: [N,T] bool. world2camera: [T,3,4].
        camera: the clip's rectified camera (square views of `size_px`, `hfov_deg`).
        chunk_size: tracks per jitted call (bounds temporary memory; results do not depend
            on it).

    Returns:
        motion [N,T] float32 px, 0 where there is no valid earlier frame (always at t = 0).
    """
    import jax

    from s4d_ray.track.jax_cache import enable_compilation_cache
    from s4d_ray.track.optimize import frame_bucket

    num_tracks, num_frames = valid.shape
    if points.shape != (num_tracks, num_frames, 3) or world2camera.shape != (num_frames, 3, 4):
        raise ValueError(
            f"points {points.shape} / world2camera {world2camera.shape} do not match "
            f"valid {valid.shape}"
        )
    motion = np.zeros((num_tracks, num_frames), dtype=np.float32)
    if num_tracks == 0 or num_frames < 2 or window < 1:
        return motion
    enable_compilation_cache()
    padded = frame_bucket(num_frames)
    projection = np.empty((padded, 3, 4), np.float64)
    projection[:num_frames] = camera.intrinsics() @ world2camera
    projection[num_frames:] = projection[num_frames - 1]  # padded frames are never valid
    lags = min(window, num_frames - 1)
    bounds = np.array([camera.size_px - 0.5, camera.size_px - 0.5], np.float64)
    chunk_points = np.zeros((chunk_size, padded, 3), np.float64)
    chunk_valid = np.zeros((chunk_size, padded), bool)
    with jax.enable_x64(True):
        for start in range(0, num_tracks, chunk_size):
            stop = min(start + chunk_size, num_tracks)
            chunk_points[: stop - start, :num_frames] = points[start:stop]
            chunk_valid[: stop - start, :num_frames] = valid[start:stop]
            chunk_valid[stop - start :] = False
            squared = _motion_chunk(chunk_points, chunk_valid, projection, bounds, lags)
            motion[start:stop] = np.sqrt(np.asarray(squared)[: stop - start, :num_frames])
    return motion


def _jitted_motion_chunk():
    """The jitted kernel of `motion_displacement` (built on first use: JAX imports lazily)."""
    import jax
    import jax.numpy as jnp

    def project(xyz, projection, bounds):
        def row(i):
            return (
                projection[None, :, i, 0] * xyz[..., 0]
                + projection[None, :, i, 1] * xyz[..., 1]
                + projection[None, :, i, 2] * xyz[..., 2]
                + projection[None, :, i, 3]
            )

        z = row(2)
        x = row(0) / z
        y = row(1) / z
        ok = (x >= 0.5) & (y >= 0.5) & (x < bounds[0]) & (y < bounds[1])
        return x, y, ok & (z > MIN_PROJECTION_DEPTH_M)

    @jax.jit
    def kernel(points, valid, projection, bounds, lags):
        """Squared motion [n,T] of points [n,T,3] (valid [n,T]) with projection [T,3,4]."""
        x_now, y_now, ok_now = project(points, projection, bounds)
        ok_now = ok_now & valid
        frame = jnp.arange(points.shape[1])[None, :]

        def one_lag(lag, best):
            # past[:, t] = points[:, t - lag], seen by frame t's camera
            past = jnp.roll(points, lag, axis=1)
            x_past, y_past, ok_past = project(past, projection, bounds)
            pair = ok_past & jnp.roll(valid, lag, axis=1) & ok_now & (frame >= lag)
            squared = (x_past - x_now) ** 2 + (y_past - y_now) ** 2
            return jnp.maximum(best, jnp.where(pair, squared, 0.0))

        return jax.lax.fori_loop(1, lags + 1, one_lag, jnp.zeros(valid.shape, points.dtype))

    return kernel


def _motion_chunk(points, valid, projection, bounds, lags):
    global _MOTION_KERNEL
    if _MOTION_KERNEL is None:
        _MOTION_KERNEL = _jitted_motion_chunk()
    return _MOTION_KERNEL(points, valid, projection, bounds, lags)


_MOTION_KERNEL = None


def query_colours(video: np.ndarray, query_points: np.ndarray) -> np.ndarray:
    """Colour [N,3] uint8 of each track at its query point (reference `Track3d` colours).

    video: [T,H,W,3] uint8. query_points: [N,3] (t, y, x), truncated to integers.
    """
    query = np.asarray(query_points)
    frame = query[:, 0].astype(np.int64)
    row = query[:, 1].astype(np.int64)
    col = query[:, 2].astype(np.int64)
    return np.asarray(video[frame, row, col], dtype=np.uint8)
