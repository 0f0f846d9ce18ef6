"""The one place that maps raw VR180 video files to video ids and back.

Accepted: `.mp4 .mov .mkv .webm` in any letter case (`UPPER.MP4` too). The id of a file is
- `<id>` for yt-dlp's default name `Title [<id>].<ext>`,
- the name itself when it is a valid video id (`<video_id>.mp4`, the release's naming),
- otherwise a valid id derived from the name: runs of other characters become `-`, and a
  short hash of the whole name is appended when anything was changed or cut, so that
  `IMG 0001.MOV` and `IMG_0001.MOV` stay two videos.
Two files giving one id are refused naming both (`DuplicateVideoError`), never picked at
random. A release clip finds its video by `video_id` through `find_video`, and with its
stereo packing (`StereoFormat`) through `find_raw_video`, the one lookup every stage and tool
that reads raw video uses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from s4d_ray.errors import InputError, VideoError
from s4d_ray.io import fs
from s4d_ray.io.ids import VIDEO_ID_RE, validate_video_id
from s4d_ray.io.spherical import (
    SphericalMetadata,
    SphericalMetadataError,
    read_spherical_metadata,
)
from s4d_ray.io.stereo_format import (
    StereoFormat,
    StereoFormatError,
    as_bounds,
    metadata_values,
    read_sidecar,
    resolve_format,
)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")
"""Containers read as raw videos (compared in lower case)."""

VIDEO_FORMAT_EXTRA = "video_format"
"""The npz extra (a JSON string) carrying the StereoFormat decided for the clip's video."""

_YT_DLP_ID = re.compile(r"\[([A-Za-z0-9_-]{1,64})\]$")
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]+")
_DERIVED_LENGTH = 48


class DuplicateVideoError(InputError):
    """Two video files that give the same video id."""

    def __init__(self, video_id: str, uris: list[str]):
        self.video_id = video_id
        self.uris = uris
        super().__init__(
            f"video id {video_id!r} is given by {len(uris)} files: "
            + ", ".join(repr(u) for u in uris)
            + "; rename or remove all but one"
        )


def video_suffix(name: str) -> str:
    """The container suffix of a file name in lower case, or '' when it is not a video."""
    suffix = posixpath.splitext(name)[1].lower()
    return suffix if suffix in VIDEO_SUFFIXES else ""


def video_id_of_name(name: str) -> str:
    """The video id a raw video's file name gives (see the module docstring)."""
    stem = posixpath.splitext(posixpath.basename(name))[0]
    tagged = _YT_DLP_ID.search(stem.rstrip())
    if tagged:
        return tagged.group(1)
    if VIDEO_ID_RE.fullmatch(stem):
        return stem
    derived = _NOT_ID.sub("-", stem).strip("-")[:_DERIVED_LENGTH] or "video"
    digest = hashlib.sha1(stem.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{derived}-{digest}"


def list_videos(folder: str) -> tuple[dict[str, str], list[DuplicateVideoError]]:
    """({video id: uri}, duplicates) of the raw videos in `folder` (one listing). A
    duplicated id maps to none of its files; each duplicate is returned as an error."""
    by_id: dict[str, list[str]] = {}
    for uri in fs.list_files(folder):
        if video_suffix(uri):
            by_id.setdefault(video_id_of_name(uri), []).append(uri)
    videos = {vid: uris[0] for vid, uris in by_id.items() if len(uris) == 1}
    duplicates = [
        DuplicateVideoError(v, uris) for v, uris in sorted(by_id.items()) if len(uris) > 1
    ]
    return dict(sorted(videos.items())), duplicates


def find_video(folder: str, video_id: str, label: str = "", stage: str = "decode") -> str:
    """The URI of the raw video of `video_id` in `folder`: the release's own name
    `<video_id>.mp4` when it exists (one existence check per clip, not a listing of a
    folder of thousands of videos), else found by listing the folder. The id is validated
    before it becomes part of a path (UnsafeIdError). VideoError naming the id and the
    folder (or both files of a duplicate) when there is none or more than one."""
    direct = fs.join(folder, f"{validate_video_id(video_id)}.mp4")
    if fs.exists(direct):
        return direct
    videos, duplicates = list_videos(folder)
    for duplicate in duplicates:
        if duplicate.video_id == video_id:
            raise VideoError(label or video_id, stage, str(duplicate))
    if video_id not in videos:
        raise VideoError(
            label or video_id,
            stage,
            f"no raw video of id {video_id!r} in {folder!r} (looked for {video_id}.<ext>, "
            f"'<title> [{video_id}].<ext>' with <ext> one of {', '.join(VIDEO_SUFFIXES)})",
        )
    return videos[video_id]


@dataclass(frozen=True)
class RawVideo:
    """A raw video file and how its two eyes are packed."""

    uri: str
    format: StereoFormat


@functools.lru_cache(maxsize=256)
def _spherical_metadata(uri: str) -> SphericalMetadata:
    """A raw video's spherical metadata, read once per worker process: every clip of a
    release video asks for it, and a long video's `moov` is megabytes."""
    try:
        with fs.open_input(uri) as handle:
            return read_spherical_metadata(handle)
    except SphericalMetadataError as e:
        raise StereoFormatError(f"{uri!r}: unreadable spherical metadata: {e}") from None


def declared_format_values(uri: str) -> list[tuple[str, dict[str, Any]]]:
    """[('sidecar', values), ('metadata', values)] of a raw video, highest precedence first
    (headers only: nothing is decoded; the sidecar, a few bytes, is read every time).
    StereoFormatError naming the file when either says something unusable."""
    metadata = _spherical_metadata(uri)
    sidecar = read_sidecar(uri)
    # a sidecar's projection settles it; otherwise the release's bounds do (release mode)
    return [("sidecar", sidecar), ("metadata", metadata_values(metadata, uri, False))]


def release_format(record: Any) -> StereoFormat:
    """The release's packing: side-by-side equirect over the record's `fov_bounds`."""
    return StereoFormat(fov_bounds=as_bounds(record.fov_bounds), sources={"fov_bounds": "release"})


def carried_format(record: Any) -> StereoFormat | None:
    """The StereoFormat a clip record carries (npz extra `video_format`), if any."""
    text = record.extras.get(VIDEO_FORMAT_EXTRA)
    if text is None:
        return None
    return StereoFormat.from_json(str(text), f"clip {record.name!r} {VIDEO_FORMAT_EXTRA}")


def find_raw_video(folder: str, record: Any, stage: str = "decode") -> RawVideo:
    """A clip record's raw video and its packing: the format the clip carries (decided when
    an own video was prepared), else the video's sidecar, else its metadata, else the
    release's side-by-side equirect over the record's `fov_bounds` (source 'release').
    VideoError naming the clip and `stage` when the video is missing or its format unusable."""
    uri = find_video(folder, record.video_id, record.name, stage)
    try:
        carried = carried_format(record)
        if carried is not None:
            return RawVideo(uri, carried)
        release = release_format(record)
        return RawVideo(uri, resolve_format(declared_format_values(uri), uri, release))
    except (StereoFormatError, json.JSONDecodeError) as e:
        raise VideoError(record.name, stage, str(e)) from None
