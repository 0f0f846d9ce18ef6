"""Camera and equirectangular geometry shared by rectification, synthesis and lifting.

Conventions (as the Stereo4D reference): cameras look down +z with x right and y down; a
perspective camera of size W×H and horizontal fov `hfov` has fx = fy = W / (2·tan(hfov/2)),
principal point (W/2, H/2), and pixel (i, j) has its centre at (i + 0.5, j + 0.5). An equirect
image of size W×H covers longitude [yaw0, yaw1] and latitude [tilt0, tilt1] (`fov_bounds`, degrees)
with pixel u = (lon − yaw0)/(yaw1 − yaw0)·(W − 1), likewise v for latitude; lon = atan2(x, z),
lat = asin(y) for a unit ray.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

STEREO_BASELINE_M = 0.063
"""The Stereo4D release's stereo baseline (m), for videos that do not state their own."""
RECTIFIED_SIZE = 512
"""Side of the release's square rectified views (px)."""
RECTIFIED_HFOV_DEG = 60.0
"""Horizontal (and vertical) field of view of the release's rectified views (degrees)."""


def focal_length_px(width: int, hfov_deg: float) -> float:
    """Focal length in pixels of a perspective camera `width` px wide with `hfov_deg`."""
    return width / (2.0 * np.tan(np.radians(hfov_deg) / 2.0))


def intrinsics(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """[3,3] pinhole intrinsics, principal point at the image centre."""
    f = focal_length_px(width, hfov_deg)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class RectifiedCamera:
    """The rectified stereo camera of one clip: square views of `size_px` px with a horizontal
    field of view of `hfov_deg` degrees, eyes `baseline_m` metres apart (the video's own rig).

    Carried per clip from rectification to depth, lifting and the dense outputs, so a video
    with another baseline (or views of another size) is measured with its own camera."""

    size_px: int
    hfov_deg: float
    baseline_m: float

    @property
    def focal_px(self) -> float:
        """fx = fy in px: size / (2·tan(hfov/2))."""
        return focal_length_px(self.size_px, self.hfov_deg)

    def intrinsics(self) -> np.ndarray:
        """[3,3] pinhole intrinsics of the square view, principal point at its centre."""
        return intrinsics(self.size_px, self.size_px, self.hfov_deg)

    def with_baseline(self, baseline_m: float) -> RectifiedCamera:
        """The same views for a rig `baseline_m` metres wide."""
        return dataclasses.replace(self, baseline_m=float(baseline_m))

    def to_json(self) -> str:
        """The camera as a JSON object (how clip rows carry it)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RectifiedCamera:
        """Inverse of `to_json`."""
        fields = json.loads(text)
        return cls(int(fields["size_px"]), float(fields["hfov_deg"]), float(fields["baseline_m"]))


RELEASE_CAMERA = RectifiedCamera(RECTIFIED_SIZE, RECTIFIED_HFOV_DEG, STEREO_BASELINE_M)
"""The Stereo4D release's rectified camera: 512 px, 60°, 6.3 cm; `with_baseline` for a video
whose format states its own baseline."""


def perspective_rays(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Unit rays [H,W,3] through the pixel centres of a perspective camera looking down +z."""
    f = focal_length_px(width, hfov_deg)
    x = (np.arange(width) + 0.5 - width / 2.0) / f
    y = (np.arange(height) + 0.5 - height / 2.0) / f
    xv, yv = np.meshgrid(x, y)
    rays = np.stack([xv, yv, np.ones_like(xv)], axis=-1)
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def rays_to_equirect(
    rays: np.ndarray, fov_bounds: np.ndarray, equirect_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Equirect pixel coords (u, v) float32 [...] of unit `rays [...,3]`."""
    yaw0, yaw1, tilt0, tilt1 = np.radians(np.asarray(fov_bounds, dtype=np.float64))
    lon = np.arctan2(rays[..., 0], rays[..., 2])
    lat = np.arcsin(np.clip(rays[..., 1], -1.0, 1.0))
    u = (lon - yaw0) / (yaw1 - yaw0) * (equirect_hw[1] - 1)
    v = (lat - tilt0) / (tilt1 - tilt0) * (equirect_hw[0] - 1)
    return u.astype(np.float32), v.astype(np.float32)


def equirect_rays(equirect_hw: tuple[int, int], fov_bounds: np.ndarray) -> np.ndarray:
    """Unit rays [H,W,3] of each equirect pixel (inverse of `rays_to_equirect`)."""
    yaw0, yaw1, tilt0, tilt1 = np.radians(np.asarray(fov_bounds, dtype=np.float64))
    lon = np.linspace(yaw0, yaw1, equirect_hw[1])
    lat = np.linspace(tilt0, tilt1, equirect_hw[0])
    lon, lat = np.meshgrid(lon, lat)
    return np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], axis=-1)


def composed_rectify_map(
    rectified2rig: np.ndarray,
    fov_bounds: np.ndarray,
    equirect_hw: tuple[int, int],
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """One remap (map_x, map_y) float32 [S,S] from the raw equirect eye to the rectified view.

    Composes the reference's two steps (rectify the whole equirect by `rectified2rig [3,3]`,
    then crop a perspective view) into a single lookup: perspective ray → rig frame → raw
    equirect pixel. Computed once per clip and eye.
    """
    rays = perspective_rays(out_size, out_size, hfov_deg) @ np.asarray(rectified2rig).T
    return rays_to_equirect(rays, fov_bounds, equirect_hw)


def equirect_rectification_map(
    rectified2rig: np.ndarray, fov_bounds: np.ndarray, equirect_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Reference step 1: full-resolution map from the rectified equirect to the raw equirect."""
    rays = equirect_rays(equirect_hw, fov_bounds) @ np.asarray(rectified2rig).T
    return rays_to_equirect(rays, fov_bounds, equirect_hw)


def perspective_crop_map(
    fov_bounds: np.ndarray,
    equirect_hw: tuple[int, int],
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference step 2: map from the perspective crop to the (rectified) equirect."""
    return rays_to_equirect(perspective_rays(out_size, out_size, hfov_deg), fov_bounds, equirect_hw)


def rotation_matrix(axis: ArrayLike, angle_rad: float) -> np.ndarray:
    """[3,3] rotation by `angle_rad` about `axis` (Rodrigues)."""
    vector = np.asarray(axis, dtype=np.float64)
    u = vector / np.linalg.norm(vector)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def project_points(
    points_world: np.ndarray, world2camera: np.ndarray, k: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project `points_world [...,3]` with `world2camera [3,4]`: (pixels [...,2], depth [...])."""
    cam = points_world @ world2camera[:, :3].T + world2camera[:, 3]
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        px = cam[..., :2] / z[..., None] * np.array([k[0, 0], k[1, 1]]) + k[:2, 2]
    return px, z


def invert_poses(poses: np.ndarray) -> np.ndarray:
    """Invert rigid poses [...,3,4] (e.g. camera2world -> world2camera extrinsics)."""
    rot = np.swapaxes(poses[..., :3], -1, -2)
    trans = -rot @ poses[..., 3:]
    return np.concatenate([rot, trans], axis=-1)
