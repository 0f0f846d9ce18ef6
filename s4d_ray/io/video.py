"""Video decode and encode with PyAV (FFmpeg): sequential decoding of just the frames a clip needs.

Timestamps are microseconds in the raw video, as in the Stereo4D release. Decoding seeks once to
the keyframe before the first wanted timestamp and then decodes forward, which is what makes
rectification fast (the reference seeks per frame).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.stream import VideoStream

from s4d_ray.errors import VideoError
from s4d_ray.io import fs
from s4d_ray.limits import env_limit

MAX_FRAME_PIXELS_ENV = "S4D_MAX_FRAME_PIXELS"
DEFAULT_MAX_FRAME_PIXELS = 8192 * 8192
"""Largest frame (width × height) a video may declare: 8K side-by-side and top-bottom fit.
Checked from the stream header before any frame is decoded (a 2.6 MB file declaring
16384×8192 would cost ~10 GB of frames); raise it with the environment variable
S4D_MAX_FRAME_PIXELS (set it in the job's runtime_env so every worker sees it)."""

MIN_FRAME_SIDE = 16
"""Smaller frames hold no usable picture (a 1×1 video made OpenCV fail deep in a stage)."""

MAX_TIMESTAMP_US = 10**15 - 1
"""Frame times are at most 15 digits of µs (31 years): the clip id's timestamp field."""


def max_frame_pixels() -> int:
    """The frame-size cap in force (S4D_MAX_FRAME_PIXELS, else the 8192×8192 default)."""
    return env_limit(MAX_FRAME_PIXELS_ENV, DEFAULT_MAX_FRAME_PIXELS)


def check_frame_size(width: int, height: int, uri: str, label: str, stage: str) -> None:
    """Refuse a frame size outside [16 px a side, max_frame_pixels()] before decoding it."""
    if width < MIN_FRAME_SIDE or height < MIN_FRAME_SIDE:
        raise VideoError(
            label, stage, f"{uri!r}: frames of {width}×{height} px are too small to be video"
        )
    cap = max_frame_pixels()
    if width * height > cap:
        raise VideoError(
            label,
            stage,
            f"{uri!r}: frames of {width}×{height} px ({width * height} pixels) exceed the limit "
            f"of {cap} pixels; raise it with {MAX_FRAME_PIXELS_ENV}",
        )


@dataclass(frozen=True)
class VideoInfo:
    """Geometry and timing of a video stream."""

    width: int
    height: int
    fps: float
    duration_us: int | None


@dataclass
class DecodeCount:
    """Frames a video pass decoded, and how many of them it converted to full-resolution
    RGB (the benchmark's "each source frame decoded once, converted at most once")."""

    decoded: int = 0
    rgb: int = 0


def _open(uri: str):
    """Open a local path directly, anything else through fsspec as a seekable file object."""
    if fs.is_local(uri):
        fs.input_size(uri)  # a regular file: a FIFO or device would block or never end
        return av.open(uri.removeprefix("file://"))
    fsys, path = fs.filesystem(uri)
    return av.open(fsys.open(path, "rb"))


DECODE_THREADS: contextvars.ContextVar[int] = contextvars.ContextVar("decode_threads", default=0)
"""FFmpeg threads per opened stream (0: FFmpeg's own choice, one per core)."""


@contextlib.contextmanager
def decode_threads(count: int) -> Iterator[None]:
    """Streams opened within decode with `count` FFmpeg threads: a Ray task holding N CPUs
    decodes with N threads instead of one per core of the node."""
    token = DECODE_THREADS.set(max(1, int(count)))
    try:
        yield
    finally:
        DECODE_THREADS.reset(token)


@contextlib.contextmanager
def open_video_stream(uri: str, label: str, stage: str) -> Iterator[tuple[Any, Any]]:
    """(container, its first video stream) set to threaded decoding (`decode_threads`
    threads when set), closed on exit; a
    VideoError naming `label` (clip or video id) and `stage` when the file cannot be opened
    or has no video stream."""
    try:
        container = _open(uri)
    except (av.FFmpegError, OSError) as e:
        raise VideoError(label, stage, f"cannot open video {uri!r}: {e}") from e
    with container:
        try:
            stream = container.streams.video[0]
        except IndexError:
            raise VideoError(label, stage, f"no video stream in {uri!r}") from None
        check_frame_size(stream.width, stream.height, uri, label, stage)
        stream.thread_type = "AUTO"
        if DECODE_THREADS.get():
            stream.thread_count = DECODE_THREADS.get()
        yield container, stream


def probe_video(uri: str, clip_id: str = "", stage: str = "decode") -> VideoInfo:
    """Width, height, fps and duration of the first video stream of `uri`."""
    try:
        with _open(uri) as container:
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = int(stream.duration * stream.time_base * 1_000_000)
            elif container.duration is not None:
                duration = int(container.duration)
            rate = stream.average_rate or stream.guessed_rate or 0
            return VideoInfo(stream.width, stream.height, float(rate), duration)
    except (av.FFmpegError, IndexError, OSError) as e:
        raise VideoError(clip_id or uri, stage, f"cannot open video {uri!r}: {e}") from e


def decode_frames_at(
    uri: str,
    timestamps_us: np.ndarray,
    clip_id: str = "",
    stage: str = "decode",
    tally: DecodeCount | None = None,
) -> Iterator[np.ndarray]:
    """Yield the RGB frames [H,W,3] uint8 whose times best match `timestamps_us` (increasing).

    A wanted timestamp t matches the decoded frame at time f with f - P/2 <= t < f + P/2 (P the
    frame period), in exact rational arithmetic: a timestamp exactly halfway between two frames
    takes the later one, as OpenCV's seek to frame round(t·fps) (half up) does in the
    reference. One seek to the first timestamp, then sequential decoding (counted in `tally`).
    Raises VideoError if
    the video ends before the last timestamp, a frame is missing, or the stream is corrupt.
    """
    wanted = np.asarray(timestamps_us, dtype=np.int64)
    tally = tally if tally is not None else DecodeCount()
    label = clip_id or uri
    if wanted.size == 0:
        return
    with open_video_stream(uri, label, stage) as (container, stream):
        rate = Fraction(stream.average_rate or stream.guessed_rate or 30)
        half_period = 1 / (2 * rate)  # s, exact
        base = Fraction(stream.time_base)
        first_seconds = max(0.0, wanted[0] / 1e6 - 1.0)
        if first_seconds > 0:
            container.seek(int(first_seconds / base), stream=stream, backward=True)
        index = 0
        last_time = None
        try:
            for frame in container.decode(stream):
                tally.decoded += 1
                if frame.pts is None:
                    continue
                time = frame.pts * base  # s, exact
                last_time = float(time * 1_000_000)
                image = None
                while (
                    index < wanted.size and Fraction(int(wanted[index]), 10**6) < time + half_period
                ):
                    if Fraction(int(wanted[index]), 10**6) < time - half_period:
                        raise VideoError(
                            label, stage, f"no frame near timestamp {wanted[index]} µs in {uri!r}"
                        )
                    if image is None:
                        image = frame.to_ndarray(format="rgb24")
                        tally.rgb += 1
                    yield image
                    index += 1
                if index >= wanted.size:
                    return
        except av.FFmpegError as e:
            raise VideoError(label, stage, f"corrupt video {uri!r}: {e}") from e
        end = "no frames decoded" if last_time is None else f"last frame at {int(last_time)} µs"
        raise VideoError(
            label,
            stage,
            f"timestamp {int(wanted[index])} µs is past the end of {uri!r} ({end}); "
            f"{wanted.size - index} of {wanted.size} frames missing",
        )


def decode_first_frames(
    uri: str, count: int, clip_id: str = "", stage: str = "decode"
) -> np.ndarray:
    """The first `count` RGB frames [count,H,W,3] uint8 of a video, decoded in order.

    For videos whose frame k is clip frame k (the reference's rectified mp4s are written at a
    fixed 30 fps from frame 0, so the raw timestamps do not apply to them).
    """
    label = clip_id or uri
    frames = []
    with open_video_stream(uri, label, stage) as (container, stream):
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == count:
                    return np.stack(frames)
        except av.FFmpegError as e:
            raise VideoError(label, stage, f"cannot decode video {uri!r}: {e}") from e
    raise VideoError(label, stage, f"{uri!r} has {len(frames)} frames, the clip needs {count}")


def checked_time_us(frame: av.VideoFrame, base: Fraction, previous: int | None, where: str) -> int:
    """The frame's time in µs, refusing what would make clip timestamps lie: no time at all
    (a raw elementary stream), a negative or over-15-digit time (the clip id's field), or a
    time not after the previous frame's (duplicate or reordered presentation times)."""
    if frame.pts is None:
        raise ValueError(
            f"{where} has no presentation time (a raw stream?): remux it into MP4 or Matroska"
        )
    time_us = int(round(float(frame.pts * base) * 1_000_000))
    if not 0 <= time_us <= MAX_TIMESTAMP_US:
        raise ValueError(
            f"{where} is at {time_us} µs, outside [0, {MAX_TIMESTAMP_US}] (a negative start "
            "offset? remux with `ffmpeg -i IN -c copy -avoid_negative_ts make_zero OUT`)"
        )
    if previous is not None and time_us <= previous:
        raise ValueError(
            f"{where} is at {time_us} µs, not after the previous frame's {previous} µs "
            "(duplicate or out-of-order frame times)"
        )
    return time_us


def sample_frames(
    uri: str, count: int, label: str = "", stage: str = "decode", tally: DecodeCount | None = None
) -> tuple[list[np.ndarray], str]:
    """About `count` grey frames [H,W] uint8 spread over the whole video, and how they were
    read: "keyframes" — the keyframe at or before each of `count` times spread evenly over
    the stream's duration, each decoded on its own after a seek (a keyframe needs no other
    frame; a 10-minute video is not decoded through) — or, when those give fewer than
    count // 3 distinct frames (one keyframe every few hundred frames) or the video is short
    (at most 4 × count frames), "sequential": every k-th frame of one read-through, k from
    the stream's frame count (else doubling as the video goes on), so at most `count` frames
    (else 2 × count) are held. Grey straight from the decoder: no RGB conversion."""
    tally = tally if tally is not None else DecodeCount()
    with open_video_stream(uri, label, stage) as (container, stream):
        start = stream.start_time or 0
        frames: dict[int, np.ndarray] = {}
        rate = float(stream.average_rate or stream.guessed_rate or 30)
        duration_s = float(stream.duration * stream.time_base) if stream.duration else 0.0
        try:
            if duration_s * rate > 4 * count:  # else a short video: read through at once
                for i in range(count):
                    target = start + int((i + 0.5) * stream.duration / count)
                    container.seek(target, stream=stream, backward=True, any_frame=False)
                    frame = next(container.decode(stream), None)
                    if frame is None or frame.pts is None:
                        continue
                    tally.decoded += 1
                    checked_time_us(frame, stream.time_base, None, f"{uri!r}: a keyframe")
                    if frame.pts not in frames:
                        frames[frame.pts] = frame.to_ndarray(format="gray")
            if len(frames) >= max(2, count // 3):
                return [frames[pts] for pts in sorted(frames)], "keyframes"
            frames.clear()
            container.seek(start, stream=stream, backward=True, any_frame=False)
            kept: list[np.ndarray] = []
            known = stream.frames or int(duration_s * rate)
            stride = max(1, -(-known // count)) if known else 1
            previous = None
            for index, frame in enumerate(container.decode(stream)):
                tally.decoded += 1
                previous = checked_time_us(
                    frame, stream.time_base, previous, f"{uri!r}: frame {index}"
                )
                if index % stride:
                    continue
                kept.append(frame.to_ndarray(format="gray"))
                if len(kept) >= 2 * count:  # more frames than the stream said
                    kept, stride = kept[::2], 2 * stride
        except av.FFmpegError as e:
            raise VideoError(label or uri, stage, f"corrupt video {uri!r}: {e}") from e
        except ValueError as e:
            raise VideoError(label or uri, stage, str(e)) from None
    chosen = np.unique(np.round(np.linspace(0, len(kept) - 1, min(count, len(kept)))))
    return [kept[int(i)] for i in chosen], "sequential"


def write_video(
    uri: str,
    frames: Iterable[np.ndarray],
    fps: float = 30.0,
    crf: int = 18,
    codec: str = "libx264",
    muxer: str = "mp4",
    stream_metadata: dict[str, str] | None = None,
    preset: str = "",
    keyframe_interval: int = 0,
) -> int:
    """Encode RGB frames [H,W,3] uint8 (yuv420p; H.264 in mp4 by default, any FFmpeg
    `codec` and `muxer`, e.g. libvpx-vp9 in webm) at `uri` (any fsspec URI, atomic), with
    `stream_metadata` tags on the video stream (Matroska maps `stereo_mode` to StereoMode);
    `preset`: the x264 speed preset (e.g. "ultrafast" for 5.7K test videos; default medium);
    `keyframe_interval`: at most this many frames between keyframes (0: the codec's default,
    250 for x264; YouTube's files have one every 1–5 s).

    Returns the number of frames written.
    """
    local_target = fs.is_local(uri)
    local_path = fs.filesystem(uri)[1] if local_target else ""  # without a file:// prefix
    folder = os.path.dirname(os.path.abspath(local_path)) if local_target else None
    if folder:
        os.makedirs(folder, exist_ok=True)
    # `.tmp-…mp4.partial`: a killed encoder's leftover is never listed, never looks like a video
    suffix = "." + uri.rsplit(".", 1)[-1] if "." in uri.rsplit("/", 1)[-1] else ".mp4"
    fd, tmp = tempfile.mkstemp(prefix=fs.TEMP_PREFIX, suffix=suffix + fs.TEMP_SUFFIX, dir=folder)
    os.close(fd)
    count = 0
    try:
        with av.open(tmp, "w", format=muxer) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            assert isinstance(stream, VideoStream), f"{codec} is not a video codec"
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), **({"preset": preset} if preset else {})}
            if codec == "libvpx-vp9":  # constant quality, fast enough for tests on 2 cores
                stream.options = {
                    "crf": str(crf),
                    "b": "0",
                    "deadline": "realtime",
                    "cpu-used": "8",
                }
            if keyframe_interval:
                stream.codec_context.gop_size = keyframe_interval
            stream.metadata.update(stream_metadata or {})
            for image in frames:
                if count == 0:
                    stream.height, stream.width = image.shape[:2]
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                container.mux(stream.encode(frame))
                count += 1
            container.mux(stream.encode(None))
        if local_target:
            os.chmod(tmp, 0o644)
            os.replace(tmp, local_path)
        else:
            with open(tmp, "rb") as src, fs.open_atomic(uri) as dst:
                shutil.copyfileobj(src, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return count
