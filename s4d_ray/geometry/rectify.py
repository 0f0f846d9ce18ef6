"""Rectification: raw VR180 stereo video → 512×512 rectified perspective views.

The reference rectifies each whole equirect eye (a full-resolution remap by `rectified2rig`),
then crops a perspective view (a second full remap), recomputing both maps and seeking per frame.
Here the two maps are composed into one 512×512 lookup per eye into the whole raw frame, for
any layout and projection the video's `StereoFormat` names (`geometry/vr180.py`), computed once
per clip, and the needed frames are decoded sequentially (one seek per clip). No torch or Ray on
this path.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
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
from s4d_ray.geometry.vr180 import eye_hw, rectify_map
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, read_clip
from s4d_ray.io.ids import validate_clip_id
from s4d_ray.io.overlap import check_output
from s4d_ray.io.stereo_format import StereoFormat
from s4d_ray.io.video import decode_frames_at, probe_video, write_video
from s4d_ray.io.video_lookup import VIDEO_FORMAT_EXTRA, RawVideo, find_raw_video, release_format

log = logging.getLogger(__name__)

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
    record: ClipRecord,
    frame_hw: tuple[int, int],
    fmt: StereoFormat | None = None,
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> RectifyMaps:
    """Per-eye composed maps for a clip's raw frames of `frame_hw` (the whole frame) packed
    as `fmt` (default: side-by-side equirect over the record's `fov_bounds`)."""
    fmt = fmt or release_format(record)
    left, right = (
        rectify_map(fmt, eye, record.rectified2rig[eye], frame_hw, out_size, hfov_deg)
        for eye in range(2)
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


def iter_rectified(
    record: ClipRecord,
    video: RawVideo | str,
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (left, right) rectified frames [S,S,3] for each of the clip's timestamps; a bare
    URI is read as the release's side-by-side equirect."""
    if isinstance(video, str):
        video = RawVideo(video, release_format(record))
    info = probe_video(video.uri, record.name, STAGE)
    check_vr180_frame_size(info.width, info.height, record.name, video.format)
    maps = rectify_maps(record, (info.height, info.width), video.format, out_size, hfov_deg)
    for frame in decode_frames_at(video.uri, record.timestamps, record.name, STAGE):
        yield rectify_frame(frame, maps)


def rectify_clip(
    record: ClipRecord,
    video: RawVideo | str,
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """All rectified frames of a clip: (left [T,S,S,3], right [T,S,S,3]) uint8."""
    left = np.empty((record.num_frames, out_size, out_size, 3), np.uint8)
    right = np.empty_like(left)
    count = 0
    for i, (l_img, r_img) in enumerate(iter_rectified(record, video, out_size, hfov_deg)):
        left[i], right[i] = l_img, r_img
        count += 1
    if count != record.num_frames:
        raise VideoError(record.name, STAGE, f"decoded {count} of {record.num_frames} frames")
    return left, right


def rectified_video_uris(output_folder: str, clip_id: str) -> tuple[str, str]:
    """Where the reference writes a clip's rectified videos: `OUT/<id>/<id>-{left,right}_…mp4`."""
    validate_clip_id(clip_id)
    folder = fs.join(output_folder, clip_id)
    return _flat_rectified_video_uris(folder, clip_id)


def _flat_rectified_video_uris(folder: str, clip_id: str) -> tuple[str, str]:
    """`<folder>/<id>-{left,right}_rectified.mp4`."""
    return (
        fs.join(folder, f"{clip_id}-left_rectified.mp4"),
        fs.join(folder, f"{clip_id}-right_rectified.mp4"),
    )


def find_rectified_videos(folder: str, clip_id: str) -> tuple[str, str]:
    """A clip's (left, right) rectified mp4s in `folder`: the reference's `<id>/<id>-…` layout,
    else flat `<id>-{left,right}_rectified.mp4`. One `exists` call: for many clips use
    `RectifiedVideoIndex`."""
    nested = rectified_video_uris(folder, clip_id)
    if fs.exists(nested[0]):
        return nested
    return _flat_rectified_video_uris(folder, clip_id)


def _two_level_names(folder: str) -> Iterator[tuple[str, str]]:
    """(sub-folder, file name) of every file one level below `folder`: on object stores from
    ONE recursive listing (gcsfs: one paginated request, then filtered by depth), locally by
    scandir (entry types come with the listing: no stat per file)."""
    filesystem, root = fs.filesystem(folder)
    root = root.rstrip("/")
    if fs.is_local(folder):
        try:
            with os.scandir(root) as top:
                folders = [(e.name, e.path) for e in top if e.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return
        for name, path in folders:
            with os.scandir(path) as entries:
                yield from ((name, e.name) for e in entries if not e.is_dir())
        return
    try:
        paths = filesystem.find(root, maxdepth=2)
    except FileNotFoundError:
        return
    for p in paths:
        parts = p[len(root) :].lstrip("/").split("/")
        if len(parts) == 2:
            yield parts[0], parts[1]


class RectifiedVideoIndex:
    """`find_rectified_videos` for every clip of a folder from ONE recursive listing (one
    paginated request on object stores), then dictionary look-ups: no call per clip.

    A clip whose `<id>/<id>-left_rectified.mp4` is listed gets the nested pair; any other gets
    the flat `<id>-{left,right}_rectified.mp4` pair (missing files fail when the clip is
    decoded, naming the file, as before).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.nested: frozenset[str] = frozenset(
            clip_id
            for clip_id, name in _two_level_names(folder)
            if name == f"{clip_id}-left_rectified.mp4"
        )

    def __call__(self, clip_id: str) -> tuple[str, str]:
        """(left, right) URIs of `clip_id`, as `find_rectified_videos` returns them."""
        if clip_id in self.nested:
            return rectified_video_uris(self.folder, clip_id)
        return _flat_rectified_video_uris(self.folder, clip_id)


def rectify_to_files(
    clip_id: str,
    npz_folder: str,
    raw_video_folder: str,
    output_folder: str,
    output_hfov: float = RECTIFIED_HFOV_DEG,
    fps: float = 30.0,
) -> tuple[str, str]:
    """`s4d rectify`: read `<npz>/<id>.npz` and the clip's raw video, write the two mp4s."""
    validate_clip_id(clip_id)
    if not 0.0 < output_hfov < 180.0:  # also refuses NaN (which rendered black videos)
        raise ValueError(f"output_hfov must be in (0, 180) degrees, got {output_hfov}")
    check_output(
        output_folder, {"--npz_folder": npz_folder, "--raw_video_folder": raw_video_folder}
    )
    record = read_clip(fs.join(npz_folder, f"{clip_id}.npz"), extras=(VIDEO_FORMAT_EXTRA,))
    video = find_raw_video(raw_video_folder, record, "rectify")
    left, right = rectify_clip(record, video, hfov_deg=output_hfov)
    left_uri, right_uri = rectified_video_uris(output_folder, clip_id)
    write_video(left_uri, left, fps=fps)
    write_video(right_uri, right, fps=fps)
    log.info("rectify: %s -> %s, %s", clip_id, left_uri, right_uri)
    return left_uri, right_uri


def rectify_frame_two_step(
    frame: np.ndarray,
    record: ClipRecord,
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference algorithm for one frame: rectify each whole equirect eye, then crop.

    Two full-resolution remaps per eye with maps computed on the spot. Slow by design: kept to
    validate the composed map against it and as the baseline of `benchmarks/bench_rectify.py`.
    """
    width = frame.shape[1] // 2
    eye_hw = (frame.shape[0], width)
    crop = perspective_crop_map(record.fov_bounds, eye_hw, out_size, hfov_deg)
    views = []
    for eye, image in enumerate((frame[:, :width], frame[:, width:])):
        full = equirect_rectification_map(record.rectified2rig[eye], record.fov_bounds, eye_hw)
        views.append(remap_eye(remap_eye(image, full), crop))
    return views[0], views[1]
