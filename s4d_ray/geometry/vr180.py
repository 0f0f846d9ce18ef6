"""Where a ray of each eye lands in a raw stereo frame, for every layout and projection.

A raw frame [H,W,3] holds both eyes (`io.stereo_format.StereoFormat.layout`); each eye's part
is an equirect (longitude/latitude linear in the pixel, the release's convention: pixel 0 and
W−1 are the bounds) or an equidistant fisheye (image radius ∝ angle off the optical axis,
r = θ · radius / (fov/2), centred at the circle's centre). Rays are the eye's rig frame
(x right, y down, z forward). Pixels are OpenCV's (integer = pixel centre), in the whole frame,
so one `cv2.remap` of the whole frame reads one eye; rays outside the eye's field map to −1
(the remap's black border), never into the other eye.
"""

from __future__ import annotations

import numpy as np

from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, RECTIFIED_SIZE, perspective_rays
from s4d_ray.geometry.stereo_format import StereoFormat

OUTSIDE = -1.0
"""Map value of a ray outside the eye's field (read as the remap's black border)."""


def eye_box(fmt: StereoFormat, eye: int, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) px of eye `eye` (0 left, 1 right) in a frame of `frame_hw`."""
    height, width = frame_hw
    first = eye if fmt.layout in ("left-right", "top-bottom") else 1 - eye
    if fmt.layout in ("left-right", "right-left"):
        half = width // 2
        return 0, first * half, height, half
    half = height // 2
    return first * half, 0, half, width


def eye_hw(fmt: StereoFormat, frame_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) px of each eye's part of a frame of `frame_hw`."""
    return eye_box(fmt, 0, frame_hw)[2:]


def split_eyes(frame: np.ndarray, fmt: StereoFormat) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) eye parts (views, no copy) of a raw frame [H,W,...]."""
    parts = []
    for eye in range(2):
        top, left, h, w = eye_box(fmt, eye, frame.shape[:2])
        parts.append(frame[top : top + h, left : left + w])
    return parts[0], parts[1]


def fisheye_circle(
    fmt: StereoFormat, eye: int, part_hw: tuple[int, int]
) -> tuple[float, float, float]:
    """(cx, cy, radius) px of the eye's fisheye circle in its own part (defaults: the part's
    centre, half its shorter side)."""
    h, w = part_hw
    if fmt.fisheye_centres_px is None:
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    else:
        cx, cy = fmt.fisheye_centres_px[eye]
    radius = fmt.fisheye_radius_px if fmt.fisheye_radius_px is not None else min(h, w) / 2.0
    return float(cx), float(cy), float(radius)


def rays_to_eye_pixels(
    rays: np.ndarray, fmt: StereoFormat, eye: int, frame_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Frame pixel coords (u, v) float32 [...] of unit rig rays `rays [...,3]` of eye `eye`;
    OUTSIDE where the ray is outside the eye's field."""
    top, left, h, w = eye_box(fmt, eye, frame_hw)
    rays = np.asarray(rays, np.float64)
    x, y, z = rays[..., 0], rays[..., 1], rays[..., 2]
    if fmt.projection == "fisheye":
        cx, cy, radius = fisheye_circle(fmt, eye, (h, w))
        half = np.radians(fmt.fov_deg) / 2.0
        theta = np.arccos(np.clip(z, -1.0, 1.0))
        rho = np.hypot(x, y)
        scale = np.where(rho > 1e-12, theta / half * radius / np.maximum(rho, 1e-12), 0.0)
        u, v = cx + x * scale, cy + y * scale
        inside = theta <= half
    else:
        yaw0, yaw1, tilt0, tilt1 = np.radians(np.asarray(fmt.fov_bounds, np.float64))
        lon = np.arctan2(x, z)
        lat = np.arcsin(np.clip(y, -1.0, 1.0))
        u = (lon - yaw0) / (yaw1 - yaw0) * (w - 1)
        v = (lat - tilt0) / (tilt1 - tilt0) * (h - 1)
        inside = (lon >= yaw0) & (lon <= yaw1) & (lat >= tilt0) & (lat <= tilt1)
    inside &= (u > -0.5) & (u < w - 0.5) & (v > -0.5) & (v < h - 0.5)
    u = np.where(inside, u + left, OUTSIDE)
    v = np.where(inside, v + top, OUTSIDE)
    return u.astype(np.float32), v.astype(np.float32)


def eye_pixel_rays(
    fmt: StereoFormat, eye: int, frame_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Unit rig rays [h,w,3] through every pixel centre of the eye's part, and which pixels
    see the field [h,w] bool (a fisheye's corners do not). The inverse of
    `rays_to_eye_pixels`; what a renderer needs."""
    _, _, h, w = eye_box(fmt, eye, frame_hw)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return eye_pixels_to_rays(np.stack([u, v], -1), fmt, eye, (h, w))


def eye_pixels_to_rays(
    uv: np.ndarray, fmt: StereoFormat, eye: int, part_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Unit rays [...,3] of pixels `uv [...,2]` in the eye's own part (of `part_hw`), and
    whether each is inside the field [...] bool."""
    h, w = part_hw
    u, v = uv[..., 0], uv[..., 1]
    if fmt.projection == "fisheye":
        cx, cy, radius = fisheye_circle(fmt, eye, part_hw)
        dx, dy = u - cx, v - cy
        r = np.hypot(dx, dy)
        theta = r / radius * np.radians(fmt.fov_deg) / 2.0
        with np.errstate(invalid="ignore", divide="ignore"):
            sx = np.where(r > 1e-12, dx / r, 0.0)
            sy = np.where(r > 1e-12, dy / r, 0.0)
        rays = np.stack([np.sin(theta) * sx, np.sin(theta) * sy, np.cos(theta)], -1)
        return rays, r <= radius
    yaw0, yaw1, tilt0, tilt1 = np.radians(np.asarray(fmt.fov_bounds, np.float64))
    lon = yaw0 + u / (w - 1) * (yaw1 - yaw0)
    lat = tilt0 + v / (h - 1) * (tilt1 - tilt0)
    rays = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], -1)
    return rays, np.ones(u.shape, bool)


def rectify_map(
    fmt: StereoFormat,
    eye: int,
    rectified2rig: np.ndarray,
    frame_hw: tuple[int, int],
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """One remap (map_x, map_y) float32 [S,S] from the raw frame to eye `eye`'s rectified
    perspective view: view ray → rig frame (`rectified2rig [3,3]`) → frame pixel."""
    rays = perspective_rays(out_size, out_size, hfov_deg) @ np.asarray(rectified2rig).T
    return rays_to_eye_pixels(rays, fmt, eye, frame_hw)
