"""Rectification maths: raw VR180 stereo frames → 512×512 rectified perspective views.

The reference rectifies each whole equirect eye (a full-resolution remap by `rectified2rig`),
then crops a perspective view (a second full remap), recomputing both maps and seeking per frame.
Here the two maps are composed into one 512×512 lookup per eye into the whole raw frame, for
any layout and projection the video's `StereoFormat` names (`geometry/vr180.py`), computed once
per clip, and the needed frames are decoded sequentially (one seek per clip). No torch or Ray on
this path. Decoding a clip's frames and writing rectified videos: `s4d_ray.io.rectify`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from s4d_ray.errors import VideoError
from s4d_ray.geometry.camera import (
    RECTIFIED_HFOV_DEG,
    RECTIFIED_SIZE,
    equirect_rectification_map,
    perspective_crop_map,
)
from s4d_ray.geometry.stereo_format import StereoFormat
from s4d_ray.geometry.vr180 import eye_hw, rectify_map

MIN_VR180_HEIGHT = 1920
STAGE = "rectify"


class LowResolutionWarning(UserWarning):
    """The raw video is below 1920 lines: low-resolution downloads give bad tracks."""


@dataclass(frozen=True)
class RectifyMaps:
    """Composed remaps per eye: (map_x, map_y) float32 [S,S] into the whole raw frame."""

    left: tuple[np.ndarray, np.ndarray]
    right: tuple[np.ndarray, np.ndarray]


def check_vr180_frame_size(
    width: int, height: int, clip_id: str, fmt: StereoFormat | None = None
) -> None:
    """Reject a frame that cannot hold two eyes of `fmt` (default: side-by-side 180°
    equirect): odd split, or eyes whose shape is far from their field's (more than the 16:9
    squeeze of YouTube's 3840×2160 side-by-side streams); warn when an eye is below 1920 px
    on its longer side."""
    fmt = fmt or StereoFormat()
    split = width if fmt.layout in ("left-right", "right-left") else height
    if width <= 0 or height <= 0 or split % 2:
        raise VideoError(clip_id, STAGE, f"{width}x{height} is not a {fmt.layout} stereo frame")
    eye_h, eye_w = eye_hw(fmt, (height, width))
    yaw0, yaw1, tilt0, tilt1 = fmt.fov_bounds
    field_aspect = (yaw1 - yaw0) / (tilt1 - tilt0)
    squeeze = (eye_w / eye_h) / field_aspect
    if not 0.75 <= squeeze <= 1.34:
        raise VideoError(
            clip_id,
            STAGE,
            f"{width}x{height} is not {fmt.describe()}: each eye is {eye_w}x{eye_h} px for a "
            f"field of {yaw1 - yaw0:g}°×{tilt1 - tilt0:g}° (pixels {squeeze:.2f} times wider "
            "than tall)",
        )
    if max(eye_h, eye_w) < MIN_VR180_HEIGHT:
        warnings.warn(
            f"clip {clip_id}: raw video is {width}x{height}, eyes of {eye_w}x{eye_h} px, "
            f"below {MIN_VR180_HEIGHT} lines; "
            "low-resolution downloads are a known source of bad tracks",
            LowResolutionWarning,
            stacklevel=2,
        )


def rectify_maps(
    rectified2rig: np.ndarray,
    frame_hw: tuple[int, int],
    fmt: StereoFormat,
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> RectifyMaps:
    """Per-eye composed maps for raw frames of `frame_hw` (the whole frame, px) packed as
    `fmt`: `rectified2rig [2,3,3]` rotates each rectified eye into its raw eye."""
    left, right = (
        rectify_map(fmt, eye, rectified2rig[eye], frame_hw, out_size, hfov_deg) for eye in range(2)
    )
    return RectifyMaps(left=left, right=right)


def remap_eye(image: np.ndarray, eye_map: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bilinear lookup with a black border, as the reference's cv2.remap calls."""
    return cv2.remap(
        image,
        eye_map[0],
        eye_map[1],
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def rectify_frame(frame: np.ndarray, maps: RectifyMaps) -> tuple[np.ndarray, np.ndarray]:
    """One raw frame [H,W,3] → (left, right) rectified views [S,S,3] uint8."""
    return remap_eye(frame, maps.left), remap_eye(frame, maps.right)


def rectify_frame_two_step(
    frame: np.ndarray,
    rectified2rig: np.ndarray,
    fov_bounds: np.ndarray,
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference algorithm for one side-by-side equirect frame [H,W,3] (eyes over
    `fov_bounds [4]`, deg): rectify each whole eye by `rectified2rig [2,3,3]`, then crop.

    Two full-resolution remaps per eye with maps computed on the spot. Slow by design: kept to
    validate the composed map against it and as the baseline of `benchmarks/bench_rectify.py`.
    """
    width = frame.shape[1] // 2
    eye_hw = (frame.shape[0], width)
    crop = perspective_crop_map(fov_bounds, eye_hw, out_size, hfov_deg)
    views = []
    for eye, image in enumerate((frame[:, :width], frame[:, width:])):
        full = equirect_rectification_map(rectified2rig[eye], fov_bounds, eye_hw)
        views.append(remap_eye(remap_eye(image, full), crop))
    return views[0], views[1]
