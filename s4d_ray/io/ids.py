"""Validation of video and clip ids before they ever become part of a path or URI."""

from __future__ import annotations

import re

from s4d_ray.errors import InputError

VIDEO_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CLIP_ID_RE = re.compile(r"(?P<video_id>[A-Za-z0-9_-]{1,64})_(?P<first_ts_us>[0-9]{1,15})")


class UnsafeIdError(InputError):
    """An id that does not match the Stereo4D release pattern (and so must not become a path)."""


def validate_video_id(video_id: str) -> str:
    """Return `video_id` if it is a YouTube-style id (letters, digits, `_`, `-`), else raise."""
    if not isinstance(video_id, str) or not VIDEO_ID_RE.fullmatch(video_id):
        raise UnsafeIdError(
            f"invalid video id {video_id!r}: expected 1-64 characters of [A-Za-z0-9_-]"
        )
    return video_id


def validate_clip_id(clip_id: str) -> str:
    """Return `clip_id` if it matches `<video_id>_<first timestamp in µs>`, else raise."""
    if not isinstance(clip_id, str) or not CLIP_ID_RE.fullmatch(clip_id):
        raise UnsafeIdError(
            f"invalid clip id {clip_id!r}: expected <video_id>_<digits> "
            "with video_id of [A-Za-z0-9_-]"
        )
    return clip_id


def make_clip_id(video_id: str, first_ts_us: int) -> str:
    """Clip id of the release: `<video_id>_<first timestamp in µs>`."""
    return validate_clip_id(f"{validate_video_id(video_id)}_{int(first_ts_us)}")
