"""A raw VR180 video → posed release clips, in one sequential decode pass.

`prepared_clips` probes the video's packing (`ownvideo.probe`: layout, projection, field,
baseline, from sidecar > metadata > content > default; refusals are `probe` failures found
from the first seconds), calibrates the rig once per video from keyframes spread over the
whole video (`calibration.calibrate_video`, stored as `OUTPUT/calibration/<video_id>.json` and
reused), then decodes the video once, in order. Each kept frame (`--fps`) is converted to RGB
once and serves three things: the cut detector (`clips.ClipCutter`), the wide grey view clips
are posed from, and — for the pipeline — the release's 512² view. A clip is posed as soon as
it is cut (`pose_clip`: in the pass, or in a run by the `poses` stage on any node,
`ownvideo.source`) and handed on with its frames while the pass goes on cutting the next:
the pipeline's first clip of a video starts before its last shot is cut.

Each good clip is also written as `OUTPUT/ownvideo/npz/<clip_id>.npz` in the release format —
`timestamps` the video frames' own µs, `camera2world` estimated (world = first frame's
rectified left camera), `rectified2rig` and `fov_bounds` from the calibration, the format as
the extra `video_format`, no tracks. Every clip or video that cannot be used becomes a failure
(clip or video id, stage, message with the figures). A per-video
`OUTPUT/ownvideo/videos/<video_id>.json` records what was made and the pass's figures.

Resume: the calibration is written before the pass, the cut list
(`OUTPUT/ownvideo/cuts/<video_id>.json`) grows with every clip cut and is marked complete at
the video's end. A re-run skips the clips it is told are done, reuses the poses of clips
already posed, and poses only the rest; with a complete cut list it decodes only the frames
of the clips left to do (one seek per clip), else it runs the pass again from the start (the
cuts come out the same). A killed video loses at most the clips in flight.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import cv2
import numpy as np

from s4d_ray.errors import StageError
from s4d_ray.geometry.camera import RectifiedCamera
from s4d_ray.geometry.rectify import check_vr180_frame_size, rectify_frame, rectify_maps
from s4d_ray.geometry.stereo_format import StereoFormat
from s4d_ray.io import fs, video_lookup
from s4d_ray.io.clip_io import ClipRecord, npz_stem, read_clip, write_clip
from s4d_ray.io.ids import make_clip_id, validate_video_id
from s4d_ray.io.video import DecodeCount, decode_frames_at
from s4d_ray.io.video_lookup import VIDEO_FORMAT_EXTRA
from s4d_ray.ownvideo.calibration import STAGE as CALIBRATION_STAGE
from s4d_ray.ownvideo.calibration import Calibration, CalibrationConfig, calibrate_video
from s4d_ray.ownvideo.clips import STAGE as CLIPS_STAGE
from s4d_ray.ownvideo.clips import (
    ClipConfig,
    ClipCutter,
    ClipSpan,
    FrameMeter,
    iter_video_frames,
    kept_fps,
    left_grey,
    no_clip_reason,
    scan_of,
)
from s4d_ray.ownvideo.poses import PoseConfig, estimate_poses
from s4d_ray.ownvideo.probe import STAGE as PROBE_STAGE
from s4d_ray.ownvideo.probe import ProbeReport, decide_format

log = logging.getLogger(__name__)

OWNVIDEO_DIR = "ownvideo"
VIDEO_TIMEOUT_S = 7200.0
"""Default limit on preparing one video (cuts, calibration, poses of all its clips), s."""
PREPARE_VERSION = "ownvideo-prepare-4"
POSE_VIEW_PX = 1024
POSE_VIEW_HFOV_DEG = 120.0
"""The rectified view a clip is posed from: 1024², 120° (the pipeline's is 512², 60°; the
camera is the same, only the field differs). Ten synthetic streets posed with their true rig:
worst scale error 2.8 % from the 60° view, 0.9 % from this one. Five streets whose movers
fill 23–77 % of the 60° view: three could not be posed from it, all five are from this one."""
PROGRESS_LOG_S = 30.0
"""Seconds between a video's progress lines in the log."""
POSE_EXTRAS = ("pose_rms_px", "pose_inlier_fraction", "pose_points", "calibration_vertical_px")
"""Per-clip pose figures a prepared npz carries besides the release members."""
VIDEO_TASK_CPUS = 0.5
"""Default logical CPUs of one video's task: fractional, so the tasks never starve each other
on a small machine (DESIGN.md §5); FFmpeg then decodes with one thread."""
POSE_TASK_CPUS = 0.5
"""Default logical CPUs of one clip's pose task (`ownvideo.source.pose_stage`)."""


@dataclass(frozen=True)
class OwnVideoConfig:
    """Settings of the own-video steps (clips, calibration, poses), the limit on one video's
    time, the logical CPUs its task holds (FFmpeg decodes with as many threads, at least
    one) and a clip's pose task holds, and the rectified view clips are posed from (size px,
    horizontal field deg)."""

    clips: ClipConfig = field(default_factory=ClipConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    poses: PoseConfig = field(default_factory=PoseConfig)
    timeout_s: float = VIDEO_TIMEOUT_S
    task_cpus: float = VIDEO_TASK_CPUS
    pose_cpus: float = POSE_TASK_CPUS
    pose_view_px: int = POSE_VIEW_PX
    pose_view_hfov_deg: float = POSE_VIEW_HFOV_DEG


@dataclass
class PreparedFailure:
    """A clip (or whole video, then `clip_id` is the video id) that produced no clip record."""

    clip_id: str
    stage: str
    error_type: str
    message: str


@dataclass
class VideoOutcome:
    """What `prepare_video` made of one video: written clip npz URIs, failures, figures."""

    video_id: str
    npz_uris: list[str] = field(default_factory=list)
    failures: list[PreparedFailure] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    version: str = PREPARE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VideoOutcome:
        d = json.loads(text)
        d["failures"] = [PreparedFailure(**f) for f in d["failures"]]
        return cls(**d)


def prepared_npz_folder(output_uri: str) -> str:
    """Where prepared clips go: OUTPUT/ownvideo/npz."""
    return fs.join(output_uri, OWNVIDEO_DIR, "npz")


def outcome_uri(output_uri: str, video_id: str) -> str:
    return fs.join(output_uri, OWNVIDEO_DIR, "videos", f"{video_id}.json")


def stored_outcome(output_uri: str, video_id: str) -> VideoOutcome | None:
    """The video's outcome file when this version wrote it, else None."""
    uri = outcome_uri(output_uri, video_id)
    if not fs.exists(uri):
        return None
    outcome = VideoOutcome.from_json(fs.read_bytes(uri).decode())
    return outcome if outcome.version == PREPARE_VERSION else None


def cut_list_uri(output_uri: str, video_id: str) -> str:
    """Where a video's format and cut list are kept: OUTPUT/ownvideo/cuts/<video_id>.json."""
    return fs.join(output_uri, OWNVIDEO_DIR, "cuts", f"{video_id}.json")


@dataclass(frozen=True)
class CutList:
    """What the pass over a video decided so far: its format, the frames scanned and the clips
    cut (frame indices [F'] and timestamps [F'] µs each), under the clip settings that made
    them; `complete` once the pass reached the video's end."""

    video_format: dict
    frames: int
    clips: list[ClipSpan]
    clip_config: dict
    complete: bool = False
    version: str = PREPARE_VERSION

    def to_json(self) -> str:
        clips = [
            {"frame_indices": c.frame_indices.tolist(), "timestamps": c.timestamps.tolist()}
            for c in self.clips
        ]
        return json.dumps({**asdict(self), "clips": clips}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CutList:
        d = json.loads(text)
        d["clips"] = [
            ClipSpan(
                frame_indices=np.asarray(c["frame_indices"], np.int64),
                timestamps=np.asarray(c["timestamps"], np.int64),
            )
            for c in d["clips"]
        ]
        return cls(**d)


def stored_cut_list(output_uri: str | None, video_id: str, config: ClipConfig) -> CutList | None:
    """The video's stored cut list when one was made by this version with `config`, else
    None (a changed clip setting cuts the video again)."""
    if not output_uri or not fs.exists(cut_list_uri(output_uri, video_id)):
        return None
    stored = CutList.from_json(fs.read_bytes(cut_list_uri(output_uri, video_id)).decode())
    if stored.version != PREPARE_VERSION or stored.clip_config != asdict(config):
        return None
    return stored


def _failure(clip_id: str, error: BaseException, stage: str) -> PreparedFailure:
    stage = getattr(error, "stage", stage)
    message = getattr(error, "message", None) or str(error) or repr(error)
    return PreparedFailure(clip_id, stage, type(error).__name__, message[:4000])


def clip_record(
    clip_id: str,
    video_id: str,
    timestamps: np.ndarray,
    camera2world: np.ndarray,
    rectified2rig: np.ndarray,
    fov_bounds: np.ndarray,
    extras: dict[str, np.ndarray] | None = None,
) -> ClipRecord:
    """A release record with cameras and rig and no tracks (the pipeline adds them)."""
    return ClipRecord(
        name=clip_id,
        video_id=video_id,
        timestamps=np.asarray(timestamps, np.int64),
        camera2world=np.asarray(camera2world, np.float32),
        track_lengths=np.zeros(0, np.int64),
        track_indices=np.zeros(0, np.int64),
        track_coordinates=np.zeros((0, 3), np.float32),
        rectified2rig=np.asarray(rectified2rig, np.float32),
        fov_bounds=np.asarray(fov_bounds, np.float32),
        extras=extras or {},
    ).validate()


@dataclass
class PreparedClip:
    """A clip of an own video: its release record (cameras, rig, no tracks; placeholder
    cameras while unposed), with a camera its frames in that camera's rectified view (left,
    right [T,S,S,3] uint8; else None), unposed its wide grey views to pose it from
    (pose_left, pose_right [T,P,P] uint8; else None), and seconds spent on it (`decode`:
    decoding, scanning and remapping its frames; `poses`)."""

    record: ClipRecord
    left: np.ndarray | None = None
    right: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    pose_left: np.ndarray | None = None
    pose_right: np.ndarray | None = None


class VideoTimeoutError(StageError):
    """A video not prepared within its time limit (`OwnVideoConfig.timeout_s`)."""


class ClipViews:
    """The rectified views made of each decoded frame of one video: the wide grey pair clips
    are posed from (`OwnVideoConfig.pose_view_px/hfov_deg`) and, with a `camera`, that
    camera's colour pair (the pipeline's 512², 60° view). Maps are made once per video."""

    def __init__(
        self,
        rectified2rig: np.ndarray,
        frame_hw: tuple[int, int],
        fmt: StereoFormat,
        config: OwnVideoConfig,
        camera: RectifiedCamera | None,
    ) -> None:
        self.pose = rectify_maps(
            rectified2rig, frame_hw, fmt, config.pose_view_px, config.pose_view_hfov_deg
        )
        self.camera = (
            rectify_maps(rectified2rig, frame_hw, fmt, camera.size_px, camera.hfov_deg)
            if camera
            else None
        )

    def __call__(self, frame: np.ndarray, grey: np.ndarray) -> tuple[np.ndarray, ...]:
        """(pose left, pose right[, view left, view right]) of an RGB frame [H,W,3] and its
        grey [H,W]."""
        views = rectify_frame(grey, self.pose)
        return views + rectify_frame(frame, self.camera) if self.camera else views


def _stack(items: list[np.ndarray]) -> np.ndarray:
    return np.stack(items) if items else np.zeros((0,), np.uint8)


class _Progress:
    """Per-video progress: a log line every PROGRESS_LOG_S seconds and the caller's `report`
    (metrics) for frames decoded, clips cut and clips posed."""

    def __init__(self, video_id: str, report: Callable[[str, str, int], None] | None) -> None:
        self.video_id = video_id
        self.report = report
        self.start = time.perf_counter()
        self.last_log = self.start
        self.frames = self.cut = self.posed = 0
        self.video_us = 0

    def add(self, what: str, amount: int = 1) -> None:
        setattr(self, what, getattr(self, what) + amount)
        if self.report is not None:
            self.report(self.video_id, what, amount)
        now = time.perf_counter()
        if now - self.last_log >= PROGRESS_LOG_S:
            self.last_log = now
            log.info(
                "own video %s: %d frames decoded (%.1f s of video, %.1f frames/s), %d clips "
                "cut, %d posed",
                self.video_id,
                self.frames,
                self.video_us / 1e6,
                self.frames / max(now - self.start, 1e-9),
                self.cut,
                self.posed,
            )


def _clip_id(video_id: str, clip: ClipSpan) -> str:
    """The clip's id, `<video_id>_<first timestamp µs>` (not validated: a failure row's name)."""
    return f"{video_id}_{clip.first_timestamp_us}"


class _ClipPoser:
    """What the pass does with each clip it cuts: skip it when done, else pose it (`pose_clip`:
    stored poses reused, or estimated from its wide grey views and written) or hand it on
    unposed with those views; and keep the cut list up to date."""

    def __init__(
        self,
        video_id: str,
        fmt: StereoFormat,
        calibration: Calibration,
        config: OwnVideoConfig,
        output_uri: str | None,
        figures: dict,
        progress: _Progress,
        pose: bool,
    ) -> None:
        self.video_id, self.fmt, self.calibration = video_id, fmt, calibration
        self.output_uri, self.figures, self.progress = output_uri, figures, progress
        self.config, self.pose = config, pose

    def write_cut_list(self, clips: list[ClipSpan], complete: bool, frames: int) -> None:
        """Store the clips cut so far (`complete`: the whole video was scanned)."""
        if not self.output_uri:
            return
        cuts = CutList(
            self.fmt.to_json_dict(), frames, clips, asdict(self.config.clips), complete=complete
        )
        fs.write_bytes(cut_list_uri(self.output_uri, self.video_id), cuts.to_json().encode())

    def pose_or_skip(
        self,
        clip: ClipSpan,
        held: list[tuple[tuple[np.ndarray, ...], float]],
        done: Callable[[str], bool],
    ) -> PreparedClip | PreparedFailure | str:
        """The clip's id when `done`; else the clip (its views from `held`: the views and
        seconds of each of its frames) — posed here when `self.pose`, else with its wide
        views for a later `pose_clip` — or its failure."""
        clip_id = _clip_id(self.video_id, clip)
        self.progress.add("cut")
        if done(clip_id):
            return clip_id
        views = [_stack([item[0][k] for item in held]) for k in range(len(held[0][0]))]
        seconds = {"decode": round(sum(item[1] for item in held), 4)}
        left, right = (views[2], views[3]) if len(views) == 4 else (None, None)
        try:
            make_clip_id(self.video_id, clip.first_timestamp_us)
            template = unposed_record(
                clip_id,
                self.video_id,
                clip.timestamps,
                self.calibration.rectified2rig,
                self.calibration.fov_bounds,
                self.fmt.to_json(),
                self.calibration.median_vertical_px,
            )
        except Exception as error:  # noqa: BLE001 - one bad clip fails alone
            return _failure(clip_id, error, "poses")
        self.figures.setdefault("first_clip_cut_seconds", _since(self.progress.start))
        if not self.pose:
            return PreparedClip(template, left, right, seconds, views[0], views[1])
        mark = time.perf_counter()
        try:
            record, reused = pose_clip(template, views[0], views[1], self.config, self.output_uri)
        except Exception as error:  # noqa: BLE001 - one bad clip fails alone
            return _failure(clip_id, error, "poses")
        if reused:
            self.figures["poses_reused"] = self.figures.get("poses_reused", 0) + 1
        seconds["poses"] = _since(mark)
        self.figures.setdefault("clip_seconds", {})[clip_id] = seconds
        self.figures.setdefault("first_clip_posed_seconds", _since(self.progress.start))
        self.progress.add("posed")
        return PreparedClip(record, left, right, seconds)


def unposed_record(
    clip_id: str,
    video_id: str,
    timestamps: np.ndarray,
    rectified2rig: np.ndarray,
    fov_bounds: np.ndarray,
    video_format: str,
    calibration_vertical_px: float,
) -> ClipRecord:
    """A clip's record before posing (`pose_clip`'s template): its frames' times [T] µs, the
    video's rig [2,3,3] and field, identity cameras, and as extras the format (JSON) and the
    calibration's median vertical disparity (px)."""
    extras = {
        "calibration_vertical_px": np.asarray(calibration_vertical_px, np.float32),
        VIDEO_FORMAT_EXTRA: np.asarray(video_format),
    }
    cameras = np.tile(np.eye(4, dtype=np.float32)[:3], (len(timestamps), 1, 1))
    return clip_record(clip_id, video_id, timestamps, cameras, rectified2rig, fov_bounds, extras)


def _stored_poses(template: ClipRecord, output_uri: str | None) -> ClipRecord | None:
    """The clip's npz from an earlier run, when it was posed with the same frames and rig."""
    if not output_uri:
        return None
    uri = fs.join(prepared_npz_folder(output_uri), f"{template.name}.npz")
    if not fs.exists(uri):
        return None
    record = read_clip(uri, extras=(*POSE_EXTRAS, VIDEO_FORMAT_EXTRA))
    same = np.array_equal(record.timestamps, template.timestamps) and np.allclose(
        record.rectified2rig, template.rectified2rig, atol=1e-6
    )
    return record if same else None


def pose_clip(
    template: ClipRecord,
    left: np.ndarray,
    right: np.ndarray,
    config: OwnVideoConfig,
    output_uri: str | None,
) -> tuple[ClipRecord, bool]:
    """The clip of `template` (its record before posing: frames' times, rig, field, format)
    with its trajectory estimated from its wide grey views (left, right [T,P,P] uint8, P =
    `config.pose_view_px` over `pose_view_hfov_deg`), and whether the poses were reused: an
    npz an earlier run wrote under `output_uri` for the same frames and rig is taken as it
    is; a new one is written there."""
    stored = _stored_poses(template, output_uri)
    if stored is not None:
        return stored, True
    fmt = StereoFormat.from_json(str(template.extras[VIDEO_FORMAT_EXTRA]))
    pose_config = replace(
        config.poses, baseline_m=fmt.baseline_m, hfov_deg=config.pose_view_hfov_deg
    )
    poses = estimate_poses(left, right, template.name, config=pose_config)
    extras: dict[str, np.ndarray] = {
        **template.extras,
        "pose_rms_px": np.asarray(poses.rms_px, np.float32),
        "pose_inlier_fraction": np.asarray(poses.inlier_fraction, np.float32),
        "pose_points": np.asarray(poses.num_points, np.int64),
    }
    record = clip_record(
        template.name,
        template.video_id,
        template.timestamps,
        poses.camera2world,
        template.rectified2rig,
        template.fov_bounds,
        extras,
    )
    if output_uri:
        write_clip(record, fs.join(prepared_npz_folder(output_uri), f"{template.name}.npz"))
    return record, False


def prepared_clips(
    video_uri: str,
    video_id: str,
    output_uri: str | None = None,
    config: OwnVideoConfig | None = None,
    figures: dict | None = None,
    camera: RectifiedCamera | None = None,
    done: Callable[[str], bool] | None = None,
    report: Callable[[str, str, int], None] | None = None,
    pose: bool = True,
) -> Iterator[PreparedClip | PreparedFailure | str]:
    """Probe, calibrate, cut and pose one video in one decode pass, yielding each clip as
    soon as it is cut (and posed, with `pose`; without, it carries its wide grey views for
    `pose_clip` elsewhere): a PreparedClip (with `camera`, its frames in that view), or a
    PreparedFailure (per clip, or one for the whole video), or the id of a clip `done` says
    is done (not posed again). With `output_uri` the calibration, the cut list and each
    posed clip's npz are written, and reused by a re-run. `figures` collects what the pass
    did (decodes, seconds, calibration); `report(video_id, what, amount)` hears of frames
    decoded and clips cut and posed (the engine's metrics). Frames are held for the open run
    of the cutter only (at most max_clip_frames + min_clip_frames)."""
    config = config or OwnVideoConfig()
    figures = {} if figures is None else figures
    validate_video_id(video_id)
    done = done or (lambda clip_id: False)
    progress = _Progress(video_id, report)
    deadline = progress.start + config.timeout_s if config.timeout_s > 0 else None
    tally = DecodeCount()
    calibration_tally = DecodeCount()
    figures["decodes"] = {"pass": asdict(tally), "calibration": asdict(calibration_tally)}
    stored = stored_cut_list(output_uri, video_id, config.clips)
    figures["cut_list_reused"] = stored is not None
    try:
        if stored is not None:
            fmt = StereoFormat.from_json_dict(stored.video_format)
        else:
            fmt = decide_format(video_uri, video_id, ProbeReport(uri=video_uri))
            log.info("own video %s: %s (%s)", video_id, fmt.describe(), fmt.sources)
            figures["probe_seconds"] = _since(progress.start)
    except Exception as error:  # noqa: BLE001 - a bad video is a failure row, not a crash
        yield _failure(video_id, error, PROBE_STAGE)
        return
    pending: list[ClipSpan] | None = None  # with a complete cut list: the clips left to do
    if stored is not None and stored.complete:  # only the clips not done are decoded again
        finished = [_clip_id(video_id, c) for c in stored.clips]
        pending = [
            c for c, clip_id in zip(stored.clips, finished, strict=True) if not done(clip_id)
        ]
        yield from (clip_id for clip_id in finished if done(clip_id))
        if not pending:
            return
    try:
        calibration = calibrate_video(
            video_uri, video_id, output_uri, config.calibration, fmt, calibration_tally
        )
    except Exception as error:  # noqa: BLE001
        yield _failure(video_id, error, CALIBRATION_STAGE)
        return
    figures["calibration"] = {
        "median_vertical_px": calibration.median_vertical_px,
        "before_px": calibration.before_px,
        "matches": calibration.matches,
        "frames": calibration.frames,
        "sampling": calibration.sampling,
        "seconds": round(calibration.seconds, 3),
        "field_scale": round(calibration.field_scale, 4),
    }
    figures["calibration_ready_seconds"] = _since(progress.start)
    poser = _ClipPoser(video_id, fmt, calibration, config, output_uri, figures, progress, pose)
    if pending is not None:
        frames = _frames_of_clips(video_uri, video_id, pending, tally)
    else:
        frames = iter_video_frames(video_uri, video_id, max_fps=kept_fps(config.clips), tally=tally)
    try:
        yield from _pass(
            frames, video_id, fmt, calibration, config, camera, pending, done, poser, deadline
        )
    except Exception as error:  # noqa: BLE001 - the clips already yielded are kept
        yield _failure(video_id, error, CLIPS_STAGE)
    finally:
        figures["decodes"] = {"pass": asdict(tally), "calibration": asdict(calibration_tally)}
        figures["pass_seconds"] = _since(progress.start)
        figures["frames_per_second"] = round(
            progress.frames
            / max(figures["pass_seconds"] - figures["calibration_ready_seconds"], 1e-9),
            2,
        )


def _frames_of_clips(
    video_uri: str, video_id: str, clips: list[ClipSpan], tally: DecodeCount
) -> Iterator[tuple[int, np.ndarray]]:
    """(timestamp µs, RGB frame) of each of `clips`' frames, one seek per clip."""
    for clip in clips:
        frames = decode_frames_at(video_uri, clip.timestamps, video_id, CLIPS_STAGE, tally)
        yield from zip((int(t) for t in clip.timestamps), frames, strict=True)


def _pass(
    frames: Iterator[tuple[int, np.ndarray]],
    video_id: str,
    fmt: StereoFormat,
    calibration: Calibration,
    config: OwnVideoConfig,
    camera: RectifiedCamera | None,
    pending: list[ClipSpan] | None,
    done: Callable[[str], bool],
    poser: _ClipPoser,
    deadline: float | None,
) -> Iterator[PreparedClip | PreparedFailure | str]:
    """Frames → clips: each frame scanned and remapped once; a clip cut from the pass (or,
    given the `pending` clips of a complete stored cut list, the next of those) is posed
    and yielded at once."""
    meter, cutter = FrameMeter(config.clips), ClipCutter(config.clips)
    held: dict[int, tuple[tuple[np.ndarray, ...], float]] = {}
    views: ClipViews | None = None
    frame_hw = (0, 0)
    scanned: tuple[list[int], list[tuple[float, int, float]]] = ([], [])
    cut_clips: list[ClipSpan] = []
    for index, (time_us, frame) in enumerate(frames):
        mark = time.perf_counter()
        if deadline is not None and mark > deadline:
            raise VideoTimeoutError(
                video_id,
                "prepare",
                f"preparing the video took longer than {config.timeout_s:g} s "
                f"(--video-timeout-s); {len(cut_clips)} clips were cut before",
            )
        if views is None:
            frame_hw = frame.shape[:2]
            check_vr180_frame_size(frame_hw[1], frame_hw[0], video_id, fmt)
            views = ClipViews(calibration.rectified2rig, frame_hw, fmt, config, camera)
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        poser.progress.video_us = time_us
        poser.progress.add("frames")
        if pending is not None:
            held[index] = (views(frame, grey), time.perf_counter() - mark)
            if len(held) == pending[0].timestamps.size:
                made = [held[i] for i in sorted(held)]
                held.clear()
                yield poser.pose_or_skip(pending.pop(0), made, done)
            continue
        measured = meter.measure(left_grey(grey, config.clips.analysis_size, fmt))
        scanned[0].append(time_us)
        scanned[1].append(measured)
        frozen, closed = cutter.push(index, time_us, *measured)
        if not frozen:
            held[index] = (views(frame, grey), time.perf_counter() - mark)
        for clip in closed:
            cut_clips.append(clip)
            poser.write_cut_list(cut_clips, complete=False, frames=index + 1)
            yield poser.pose_or_skip(clip, [held[int(i)] for i in clip.frame_indices], done)
        keep = set(cutter.open_indices)
        for index_held in [i for i in held if i not in keep]:
            del held[index_held]
    if pending is not None:
        return
    for clip in cutter.finish():
        cut_clips.append(clip)
        poser.write_cut_list(cut_clips, complete=False, frames=len(scanned[0]))
        yield poser.pose_or_skip(clip, [held[int(i)] for i in clip.frame_indices], done)
    if not cut_clips:
        why = no_clip_reason(scan_of(*scanned, frame_hw), config.clips)
        yield PreparedFailure(video_id, CLIPS_STAGE, "StageError", why)
        return
    poser.write_cut_list(cut_clips, complete=True, frames=len(scanned[0]))


def _since(start: float) -> float:
    """Seconds since `start` (perf_counter), rounded to ms."""
    return round(time.perf_counter() - start, 3)


def prepare_video(
    video_uri: str, video_id: str, output_uri: str, config: OwnVideoConfig | None = None
) -> VideoOutcome:
    """Prepare one video under `output_uri` in this process (`prepared_clips` without the
    pipeline's view; skipped when its outcome file exists): each good clip written as
    `OUTPUT/ownvideo/npz/<clip_id>.npz` as soon as it is posed; the outcome with the pass's
    figures as `OUTPUT/ownvideo/videos/<video_id>.json`."""
    stored = stored_outcome(output_uri, video_id)
    if stored is not None:
        return stored
    outcome = VideoOutcome(video_id=video_id)
    folder = prepared_npz_folder(output_uri)
    written = {npz_stem(uri) for uri in fs.list_files(fs.join(folder, f"{video_id}_*.npz"))}
    kept = 0
    items = prepared_clips(
        video_uri, video_id, output_uri, config, outcome.figures, done=written.__contains__
    )
    for item in items:
        if isinstance(item, PreparedFailure):
            outcome.failures.append(item)
            continue
        if isinstance(item, str):  # written by an earlier, interrupted run
            kept += 1
        outcome.npz_uris.append(fs.join(folder, f"{_name_of(item)}.npz"))
    outcome.figures["clips_kept_from_earlier_run"] = kept
    fs.write_bytes(outcome_uri(output_uri, video_id), outcome.to_json().encode())
    log.info(
        "own video %s: %d clips prepared, %d failures",
        video_id,
        len(outcome.npz_uris),
        len(outcome.failures),
    )
    return outcome


def _name_of(item: PreparedClip | str) -> str:
    return item if isinstance(item, str) else item.record.name


def list_videos(videos_uri: str) -> tuple[list[tuple[str, str]], list[PreparedFailure]]:
    """((video_id, uri) of every raw video under `videos_uri`, failures): any container of
    `io.video_lookup` in any letter case, ids from the file names; two files giving one id
    are one failure naming both."""
    videos, duplicates = video_lookup.list_videos(videos_uri)
    failures = [
        PreparedFailure(d.video_id, CLIPS_STAGE, type(d).__name__, str(d)) for d in duplicates
    ]
    return list(videos.items()), failures
