"""Clips from a raw side-by-side VR180 video: cut at shots, tracking breaks and frozen frames.

Stereo4D cut its videos where ORB-SLAM2 lost track and kept clips of at most 200 frames. Here a
single sequential pass over the video's left eye (grey, downscaled to `analysis_size`) measures
per frame
- the mean absolute grey difference to the previous frame (a shot cut is a jump far above the
  recent level; a near-zero difference is a repeated — frozen — frame), and
- how many corners of the previous frame Lucas–Kanade tracks into this one (forward-backward
  checked): a frame where most of them are lost breaks the track, as a SLAM system would.
Frozen frames are skipped (frame-rate conversions repeat frames), shots are split at cuts and
breaks, long shots into near-equal clips of ≤ `max_clip_frames`, and pieces shorter than
`min_clip_frames` are dropped. Timestamps are the video frames' own presentation times in µs.

Frame rate: frames are kept at most `fps` per second (default `DEFAULT_MAX_FPS`: a 60 fps
video is read at 30 fps, the rate Stereo4D's clips have; a 25 or 30 fps one keeps every
frame). Frames are chosen by their presentation times while decoding, before any is converted
to RGB: a dropped frame costs its decode only. At the kept rate a slow pan moves twice as far
between 60 fps frames, so it is not mistaken for repeated (frozen) frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import av
import cv2
import numpy as np

from s4d_ray.errors import StageError, VideoError
from s4d_ray.geometry.vr180 import split_eyes
from s4d_ray.io.stereo_format import StereoFormat
from s4d_ray.io.video import DecodeCount, checked_time_us, open_video_stream

STAGE = "clips"

DEFAULT_MAX_FPS = 30.0
"""Frames per second kept from a faster video when no `fps` is given."""


@dataclass(frozen=True)
class ClipConfig:
    """How a video is cut into clips.

    max_clip_frames / min_clip_frames: clip length bounds (Stereo4D: ≤ 200). cut_ratio /
    cut_min_difference: a frame is a shot cut when its grey difference to the previous frame
    exceeds cut_ratio × the median of the previous `history` frames' differences and
    cut_min_difference (grey levels, 0–255). frozen_difference: below this mean difference a
    frame repeats the previous one. min_survival / min_tracked: tracking breaks at a frame where
    fewer than this fraction of the previous frame's corners (or fewer than this many) track in.
    fps: frames kept per second at most (0: `DEFAULT_MAX_FPS`); a slower video keeps every frame.
    """

    max_clip_frames: int = 200
    min_clip_frames: int = 32
    analysis_size: int = 256
    cut_ratio: float = 4.0
    cut_min_difference: float = 12.0
    history: int = 15
    frozen_difference: float = 0.25
    corners: int = 300
    min_survival: float = 0.5
    min_tracked: int = 30
    fps: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps >= 0):
            raise ValueError(f"fps must be a finite number >= 0, got {self.fps}")
        if self.min_clip_frames < 2 or self.max_clip_frames < self.min_clip_frames:
            raise ValueError(
                f"need 2 <= min_clip_frames <= max_clip_frames, got {self.min_clip_frames}, "
                f"{self.max_clip_frames}"
            )


@dataclass(frozen=True)
class FrameScan:
    """Per-frame measurements of one video pass (F frames).

    timestamps [F] int64 µs; difference [F] mean |grey diff| to the previous frame (0 for the
    first); tracked [F] corners tracked in from the previous frame; survival [F] their fraction
    (1 for the first frame); frame_hw the full SBS frame size.
    """

    timestamps: np.ndarray
    difference: np.ndarray
    tracked: np.ndarray
    survival: np.ndarray
    frame_hw: tuple[int, int]


@dataclass(frozen=True)
class ClipSpan:
    """One clip: the video frame indices [F'] it keeps and their timestamps [F'] int64 µs."""

    frame_indices: np.ndarray
    timestamps: np.ndarray

    @property
    def first_timestamp_us(self) -> int:
        return int(self.timestamps[0])


class FrameRateFilter:
    """Keeps frames at most `max_fps` per second, by their times (µs): frame k of the kept
    rate is the first frame at or after the tick t0 + k / max_fps (less a quarter period, so
    a source at the kept rate, 29.97 or 30 fps, keeps every frame despite rounded times)."""

    def __init__(self, max_fps: float) -> None:
        self.period_us = 1e6 / max_fps
        self.first_us: int | None = None
        self.next_tick = 0

    def keep(self, time_us: int) -> bool:
        """Whether the frame at `time_us` (increasing from call to call) is kept."""
        if self.first_us is None:
            self.first_us = time_us
        since = time_us - self.first_us + self.period_us / 4
        if since < self.next_tick * self.period_us:
            return False
        self.next_tick = math.floor(since / self.period_us) + 1
        return True


def iter_video_frames(
    uri: str,
    video_id: str = "",
    stage: str = STAGE,
    max_fps: float = 0.0,
    tally: DecodeCount | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (timestamp µs, RGB frame [H,W,3] uint8) for every frame of `uri`, in order, or at
    most `max_fps` of them per second (0: all; `FrameRateFilter`, chosen before the RGB
    conversion); frames decoded and converted are counted in `tally`.

    Refused with a VideoError naming the file: frames without times, times that are negative,
    longer than 15 digits or not increasing, a frame size that changes mid-stream, and a
    display rotation (the stereo halves would be turned with the frame)."""
    label = video_id or uri
    tally = tally if tally is not None else DecodeCount()
    with open_video_stream(uri, label, stage) as (container, stream):
        base = stream.time_base
        size = (stream.width, stream.height)
        previous = None
        rate = FrameRateFilter(max_fps) if max_fps else None
        try:
            for index, frame in enumerate(container.decode(stream)):
                where = f"{uri!r}: frame {index}"
                if (frame.width, frame.height) != size:
                    raise ValueError(
                        f"{where} is {frame.width}×{frame.height} px, the stream "
                        f"{size[0]}×{size[1]}: the frame size changes mid-stream"
                    )
                if frame.rotation:
                    raise ValueError(
                        f"{uri!r} asks players to rotate it by {frame.rotation}°: a rotated "
                        "VR180 video is not side-by-side as stored; re-encode it upright"
                    )
                tally.decoded += 1
                previous = checked_time_us(frame, base, previous, where)
                if rate is None or rate.keep(previous):
                    tally.rgb += 1
                    yield previous, frame.to_ndarray(format="rgb24")
        except av.FFmpegError as e:
            raise VideoError(label, stage, f"corrupt video {uri!r}: {e}") from e
        except ValueError as e:
            raise VideoError(label, stage, str(e)) from None


def left_grey(grey: np.ndarray, size: int, fmt: StereoFormat) -> np.ndarray:
    """The left eye of a grey stereo frame [H,W] packed as `fmt`, downscaled to size²."""
    return cv2.resize(split_eyes(grey, fmt)[0], (size, size), interpolation=cv2.INTER_AREA)


def track_survival(previous: np.ndarray, current: np.ndarray, corners: int) -> tuple[int, float]:
    """(tracked count, fraction) of `previous`'s corners that LK tracks into `current` (grey).

    A corner survives if LK succeeds both ways and returns within 1 px of where it started.
    """
    points = cv2.goodFeaturesToTrack(previous, corners, 0.01, 5)
    if points is None or len(points) == 0:
        return 0, 0.0
    forward, ok_f, _ = cv2.calcOpticalFlowPyrLK(
        previous, current, points, None, winSize=(15, 15), maxLevel=3
    )
    back, ok_b, _ = cv2.calcOpticalFlowPyrLK(
        current, previous, forward, None, winSize=(15, 15), maxLevel=3
    )
    error = np.linalg.norm((back - points).reshape(-1, 2), axis=1)
    ok = (ok_f.ravel() == 1) & (ok_b.ravel() == 1) & (error < 1.0)
    return int(ok.sum()), float(ok.mean())


class FrameMeter:
    """Measures each frame against the one before (grey left eyes at `analysis_size`): mean
    absolute difference, and corners tracked in (count, fraction); the first frame gets
    (0, `corners`, 1)."""

    def __init__(self, config: ClipConfig) -> None:
        self.config = config
        self.previous: np.ndarray | None = None

    def measure(self, grey: np.ndarray) -> tuple[float, int, float]:
        if self.previous is None:
            measured = (0.0, self.config.corners, 1.0)
        else:
            count, fraction = track_survival(self.previous, grey, self.config.corners)
            measured = (float(np.mean(cv2.absdiff(grey, self.previous))), count, fraction)
        self.previous = grey
        return measured


class FrameJudge:
    """Says of each frame, from its measurements and the recent ones only, whether it repeats
    the previous frame (frozen: skipped, not part of the history), starts a new shot (cut: a
    difference far above the recent level) or breaks tracking (broken)."""

    def __init__(self, config: ClipConfig) -> None:
        self.config = config
        self.recent: list[float] = []
        self.first = True

    def judge(self, difference: float, tracked: int, survival: float) -> tuple[bool, bool, bool]:
        """(frozen, cut, broken) of the next frame."""
        config = self.config
        if self.first:
            self.first = False
            return False, False, False
        if difference < config.frozen_difference:
            return True, False, False
        level = float(np.median(self.recent)) if self.recent else 0.0
        cut = difference > max(config.cut_ratio * level, config.cut_min_difference)
        broken = not cut and (survival < config.min_survival or tracked < config.min_tracked)
        self.recent = [] if cut else (self.recent + [difference])[-config.history :]
        return False, cut, broken


class ClipCutter:
    """Cuts clips while the frames arrive, so a clip can be worked on as soon as it is cut.

    Frames are fed in order with their measurements (`FrameMeter`); frozen frames are
    skipped, a cut or a tracking break closes the open run of frames, and a run that reaches
    max_clip_frames + min_clip_frames gives up its first max_clip_frames as a clip (the rest
    can still make one). A closed run of at most max_clip_frames is one clip; a longer one
    (< max + min) two near-equal clips when both reach min_clip_frames, else its first
    max_clip_frames. Runs shorter than min_clip_frames are dropped. The open run never holds
    more than max + min frames: what a caller keeping each frame's views must buffer."""

    def __init__(self, config: ClipConfig) -> None:
        self.config = config
        self.judge = FrameJudge(config)
        self.run: list[tuple[int, int]] = []  # (frame index, timestamp µs) of the open run

    @property
    def open_indices(self) -> list[int]:
        """Frame indices of the open run (not yet part of a clip)."""
        return [index for index, _ in self.run]

    def push(
        self, index: int, time_us: int, difference: float, tracked: int, survival: float
    ) -> tuple[bool, list[ClipSpan]]:
        """Feed frame `index` (its time µs and measurements): (frozen, clips closed by it)."""
        frozen, cut, broken = self.judge.judge(difference, tracked, survival)
        if frozen:
            return True, []
        closed = self.finish() if (cut or broken) else []
        self.run.append((index, time_us))
        config = self.config
        if len(self.run) >= config.max_clip_frames + config.min_clip_frames:
            closed.append(self._span(self.run[: config.max_clip_frames]))
            self.run = self.run[config.max_clip_frames :]
        return False, closed

    def finish(self) -> list[ClipSpan]:
        """Close the open run (at a cut, a break or the video's end): its clips."""
        run, self.run = self.run, []
        config = self.config
        if len(run) < config.min_clip_frames:
            return []
        if len(run) <= config.max_clip_frames:
            return [self._span(run)]
        half = len(run) // 2
        if half >= config.min_clip_frames:
            return [self._span(run[:half]), self._span(run[half:])]
        return [self._span(run[: config.max_clip_frames])]

    @staticmethod
    def _span(run: list[tuple[int, int]]) -> ClipSpan:
        indices, times = zip(*run, strict=True)
        return ClipSpan(np.asarray(indices, np.int64), np.asarray(times, np.int64))


def scan_frames(
    frames: Iterator[tuple[int, np.ndarray]], config: ClipConfig, fmt: StereoFormat | None = None
) -> FrameScan:
    """Measure frame differences and track survival of the left eye over (timestamp µs, RGB
    stereo frame packed as `fmt`, default side-by-side) pairs."""
    fmt = fmt or StereoFormat()
    meter = FrameMeter(config)
    times, measured = [], []
    frame_hw = (0, 0)
    for time_us, frame in frames:
        frame_hw = frame.shape[:2]
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        measured.append(meter.measure(left_grey(grey, config.analysis_size, fmt)))
        times.append(time_us)
    return scan_of(times, measured, frame_hw)


def scan_of(
    times: list[int], measured: list[tuple[float, int, float]], frame_hw: tuple[int, int]
) -> FrameScan:
    """A FrameScan from per-frame times µs and `FrameMeter` measurements."""
    diffs, tracked, survival = zip(*measured, strict=True) if measured else ((), (), ())
    return FrameScan(
        timestamps=np.asarray(times, np.int64),
        difference=np.asarray(diffs, np.float64),
        tracked=np.asarray(tracked, np.int64),
        survival=np.asarray(survival, np.float64),
        frame_hw=frame_hw,
    )


def scan_video(
    uri: str, config: ClipConfig, video_id: str = "", fmt: StereoFormat | None = None
) -> FrameScan:
    """One sequential pass over the video at `uri` (any fsspec URI), at most `config.fps`
    frames per second (`DEFAULT_MAX_FPS` when 0)."""
    frames = iter_video_frames(uri, video_id, max_fps=kept_fps(config))
    return scan_frames(frames, config, fmt)


def kept_fps(config: ClipConfig) -> float:
    """Frames per second kept at most (`config.fps`, or `DEFAULT_MAX_FPS` when 0)."""
    return config.fps or DEFAULT_MAX_FPS


def frame_flags(scan: FrameScan, config: ClipConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frozen [F], cut [F], broken [F]) bool: repeats, shot cuts, tracking breaks at each frame."""
    judge = FrameJudge(config)
    flags = [
        judge.judge(float(d), int(n), float(s))
        for d, n, s in zip(scan.difference, scan.tracked, scan.survival, strict=True)
    ]
    if not flags:
        return np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, bool)
    frozen, cut, broken = (np.asarray(column, bool) for column in zip(*flags, strict=True))
    return frozen, cut, broken


def split_clips(scan: FrameScan, config: ClipConfig) -> list[ClipSpan]:
    """Clips of the scanned video (possibly none), cut as `ClipCutter` cuts them."""
    cutter = ClipCutter(config)
    clips: list[ClipSpan] = []
    for t, time_us in enumerate(scan.timestamps):
        measured = (float(scan.difference[t]), int(scan.tracked[t]), float(scan.survival[t]))
        clips += cutter.push(t, int(time_us), *measured)[1]
    return clips + cutter.finish()


def no_clip_reason(scan: FrameScan, config: ClipConfig) -> str:
    """Why a scanned video yields no clip, with the figures."""
    n = scan.timestamps.size
    if n < config.min_clip_frames:
        return f"the video has {n} frames, fewer than min_clip_frames = {config.min_clip_frames}"
    frozen, cut, broken = frame_flags(scan, config)
    if frozen[1:].mean() > 0.5:
        return (
            f"{int(frozen.sum())} of {n - 1} frames repeat the previous frame (a frozen video: "
            "nothing moves, no camera motion to measure)"
        )
    longest = 0
    run = 0
    for t in range(n):
        if frozen[t]:
            continue
        run = 1 if (cut[t] or broken[t]) else run + 1
        longest = max(longest, run)
    return (
        f"no unbroken run of {config.min_clip_frames} frames: {int(cut.sum())} shot cuts and "
        f"{int(broken.sum())} tracking breaks in {n} frames (median "
        f"{int(np.median(scan.tracked[1:])) if n > 1 else 0} corners tracked frame to frame, "
        f"longest run {longest} frames)"
    )


def split_video(
    uri: str, video_id: str, config: ClipConfig | None = None, fmt: StereoFormat | None = None
) -> tuple[list[ClipSpan], FrameScan]:
    """Clips of the video at `uri` (packed as `fmt`); raises StageError(video_id, 'clips',
    why) when there is none."""
    config = config or ClipConfig()
    scan = scan_video(uri, config, video_id, fmt)
    clips = split_clips(scan, config)
    if not clips:
        raise StageError(video_id, STAGE, no_clip_reason(scan, config))
    return clips, scan
