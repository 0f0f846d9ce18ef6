"""Rectified video in and out: a clip's raw VR180 frames decoded and rectified
(`iter_rectified`, `rectify_clip`), the reference's rectified mp4 files written
(`rectify_to_files`, `s4d rectify`) and found again (`find_rectified_videos`,
`RectifiedVideoIndex`). The maps themselves are pure geometry: `s4d_ray.geometry.rectify`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import cv2
import numpy as np

from s4d_ray.errors import VideoError
from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, RECTIFIED_SIZE
from s4d_ray.geometry.rectify import STAGE, check_vr180_frame_size, rectify_frame, rectify_maps
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, read_clip
from s4d_ray.io.ids import validate_clip_id
from s4d_ray.io.overlap import check_output
from s4d_ray.io.video import decode_frames_at, probe_video, write_video
from s4d_ray.io.video_lookup import VIDEO_FORMAT_EXTRA, RawVideo, find_raw_video, release_format

log = logging.getLogger(__name__)


def iter_rectified(
    record: ClipRecord,
    video: RawVideo | str,
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
    grey: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (left, right) rectified frames [S,S,3] (`grey`: [S,S], converted before the
    remap) for each of the clip's timestamps; a bare URI is read as the release's
    side-by-side equirect."""
    if isinstance(video, str):
        video = RawVideo(video, release_format(record))
    info = probe_video(video.uri, record.name, STAGE)
    check_vr180_frame_size(info.width, info.height, record.name, video.format)
    maps = rectify_maps(
        record.rectified2rig, (info.height, info.width), video.format, out_size, hfov_deg
    )
    for frame in decode_frames_at(video.uri, record.timestamps, record.name, STAGE):
        yield rectify_frame(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if grey else frame, maps)


def rectify_clip(
    record: ClipRecord,
    video: RawVideo | str,
    out_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
    grey: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """All rectified frames of a clip: (left [T,S,S,3], right [T,S,S,3]) uint8, or [T,S,S]
    with `grey` (a third of the memory: posing needs no colour)."""
    shape = (record.num_frames, out_size, out_size) + (() if grey else (3,))
    left = np.empty(shape, np.uint8)
    right = np.empty_like(left)
    count = 0
    frames = iter_rectified(record, video, out_size, hfov_deg, grey)
    for i, (l_img, r_img) in enumerate(frames):
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
