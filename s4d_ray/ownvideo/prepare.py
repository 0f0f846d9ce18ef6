"""A raw VR180 video → release-format clip records (no tracks yet) that the pipeline then runs.

`prepare_video` probes the video's packing (`ownvideo.probe`: layout, projection, field,
baseline, from sidecar > metadata > content > default; refusals are `probe` failures found
from the first seconds), splits it into clips, calibrates the rig once per video (stored with
the format as `OUTPUT/calibration/<video_id>.json` and reused), rectifies each clip and
estimates its metric camera trajectory. Each good clip becomes `OUTPUT/ownvideo/npz/<clip_id>.npz` in the release
format — `timestamps` the video frames' own µs, `camera2world` estimated (world = first
frame's rectified left camera), `rectified2rig` and `fov_bounds` estimated / read from the
video, the format as the extra `video_format`, no tracks — which the normal pipeline (`--npz OUTPUT/ownvideo/npz`) turns into tracks.
Every clip or video that cannot be used becomes a failure (clip or video id, stage, message
with the figures). A per-video `OUTPUT/ownvideo/videos/<video_id>.json` records what was made,
so a re-run skips finished videos.

Resume within a video: its format and cut list are written first
(`OUTPUT/ownvideo/cuts/<video_id>.json`), then its calibration, then each clip as soon as it is
posed. A video task killed midway re-runs without probing or scanning the video again (the
cut list is reused while the clip settings are the same), with the stored calibration, and
poses only the clips whose npz is not written yet: it loses at most the clip in flight.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from s4d_ray.geometry.stereo_format import StereoFormat
from s4d_ray.io import fs, video_lookup
from s4d_ray.io.clip_io import ClipRecord, npz_stem, write_clip
from s4d_ray.io.ids import make_clip_id, validate_video_id
from s4d_ray.io.rectify import rectify_clip
from s4d_ray.io.video_lookup import VIDEO_FORMAT_EXTRA, RawVideo
from s4d_ray.ownvideo.calibration import STAGE as CALIBRATION_STAGE
from s4d_ray.ownvideo.calibration import CalibrationConfig, calibrate_video
from s4d_ray.ownvideo.clips import STAGE as CLIPS_STAGE
from s4d_ray.ownvideo.clips import ClipConfig, ClipSpan, split_video
from s4d_ray.ownvideo.poses import PoseConfig, estimate_poses
from s4d_ray.ownvideo.probe import STAGE as PROBE_STAGE
from s4d_ray.ownvideo.probe import ProbeReport, decide_format

log = logging.getLogger(__name__)

OWNVIDEO_DIR = "ownvideo"
VIDEO_TIMEOUT_S = 7200.0
"""Default limit on preparing one video (cuts, calibration, poses of all its clips), s."""
PREPARE_VERSION = "ownvideo-prepare-3"
POSE_VIEW_PX = 1024
POSE_VIEW_HFOV_DEG = 120.0
"""The rectified view a clip is posed from: 1024², 120° (the pipeline's is 512², 60°; the
camera is the same, only the field differs). Ten synthetic streets posed with their true rig:
worst scale error 2.8 % from the 60° view, 0.9 % from this one. Five streets whose movers
fill 23–77 % of the 60° view: three could not be posed from it, all five are from this one."""
VIDEO_TASK_CPUS = 0.5
"""Default logical CPUs of one video's task: fractional, so the tasks never starve each other
on a small machine (DESIGN.md §5); FFmpeg then decodes with one thread."""


@dataclass(frozen=True)
class OwnVideoConfig:
    """Settings of the own-video steps (clips, calibration, poses), the limit on one video's
    time, the logical CPUs its task holds (FFmpeg decodes with as many threads, at least
    one) and the rectified view clips are posed from (size px, horizontal field deg)."""

    clips: ClipConfig = field(default_factory=ClipConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    poses: PoseConfig = field(default_factory=PoseConfig)
    timeout_s: float = VIDEO_TIMEOUT_S
    task_cpus: float = VIDEO_TASK_CPUS
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


def cut_list_uri(output_uri: str, video_id: str) -> str:
    """Where a video's format and cut list are kept: OUTPUT/ownvideo/cuts/<video_id>.json."""
    return fs.join(output_uri, OWNVIDEO_DIR, "cuts", f"{video_id}.json")


@dataclass(frozen=True)
class CutList:
    """What one pass over a video decided: its format, its frame count and its clips (frame
    indices [F'] and timestamps [F'] µs each), under the clip settings that made them."""

    video_format: dict
    frames: int
    clips: list[ClipSpan]
    clip_config: dict
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


def _cut_video(
    video_uri: str, video_id: str, output_uri: str | None, config: ClipConfig, figures: dict
) -> CutList | PreparedFailure:
    """The video's format (probe) and clips (one pass), written as its cut list with
    `output_uri`; or the video's failure."""
    start = time.perf_counter()
    try:
        fmt = decide_format(video_uri, video_id, ProbeReport(uri=video_uri))
    except Exception as error:  # noqa: BLE001 - a bad video is a failure row, not a crash
        return _failure(video_id, error, PROBE_STAGE)
    figures.update(probe_seconds=_since(start))
    log.info("own video %s: %s (%s)", video_id, fmt.describe(), fmt.sources)
    try:
        clips, scan = split_video(video_uri, video_id, config, fmt)
    except Exception as error:  # noqa: BLE001 - a bad video is a failure row, not a crash
        return _failure(video_id, error, CLIPS_STAGE)
    cuts = CutList(fmt.to_json_dict(), int(scan.timestamps.size), clips, asdict(config))
    if output_uri:
        fs.write_bytes(cut_list_uri(output_uri, video_id), cuts.to_json().encode())
    figures.update(clips_seconds=_since(start))
    return cuts


def video_clip_records(
    video_uri: str,
    video_id: str,
    output_uri: str | None = None,
    config: OwnVideoConfig | None = None,
    figures: dict | None = None,
) -> Iterator[ClipRecord | PreparedFailure | str]:
    """Split, calibrate and pose one video, one clip at a time: yields the record of each
    good clip, or a PreparedFailure (per clip, or one for the whole video), or the id of a clip
    an earlier run of this video wrote (resumed from its cut list: not decoded again). With
    `output_uri` the cut list and the calibration are written (and reused); `figures`
    collects timings and calibration figures. Frames are never held for more than one clip."""
    config = config or OwnVideoConfig()
    figures = {} if figures is None else figures
    validate_video_id(video_id)
    cuts = stored_cut_list(output_uri, video_id, config.clips)
    figures["cut_list_reused"] = cuts is not None
    finished: set[str] = set()
    if cuts is None:
        made = _cut_video(video_uri, video_id, output_uri, config.clips, figures)
        if isinstance(made, PreparedFailure):
            yield made
            return
        cuts = made
    elif output_uri:  # a resumed video: one listing of the clips its earlier run wrote
        pattern = fs.join(prepared_npz_folder(output_uri), f"{video_id}_*.npz")
        finished = {npz_stem(uri) for uri in fs.list_files(pattern)}
    fmt = StereoFormat.from_json_dict(cuts.video_format)
    clips = cuts.clips
    figures.update(video_format=cuts.video_format, frames=cuts.frames, clips=len(clips))
    todo = []
    for clip in clips:
        clip_id = f"{video_id}_{clip.first_timestamp_us}"
        if clip_id in finished:
            yield clip_id
        else:
            todo.append(clip)
    if not todo:
        return
    try:
        all_ts = np.concatenate([c.timestamps for c in clips])
        calibration = calibrate_video(
            video_uri, video_id, all_ts, output_uri, config.calibration, fmt
        )
    except Exception as error:  # noqa: BLE001
        yield _failure(video_id, error, CALIBRATION_STAGE)
        return
    figures["calibration"] = {
        "median_vertical_px": calibration.median_vertical_px,
        "before_px": calibration.before_px,
        "matches": calibration.matches,
        "seconds": round(calibration.seconds, 3),
        "field_scale": round(calibration.field_scale, 4),
    }
    video = RawVideo(video_uri, fmt)
    pose_config = replace(
        config.poses, baseline_m=fmt.baseline_m, hfov_deg=config.pose_view_hfov_deg
    )
    for clip in todo:
        clip_id = f"{video_id}_{clip.first_timestamp_us}"  # the failure row's name if invalid
        try:
            clip_id = make_clip_id(video_id, clip.first_timestamp_us)
            template = clip_record(
                clip_id,
                video_id,
                clip.timestamps,
                np.tile(np.eye(4)[:3], (clip.timestamps.size, 1, 1)),
                calibration.rectified2rig,
                calibration.fov_bounds,
            )
            left, right = rectify_clip(
                template, video, config.pose_view_px, config.pose_view_hfov_deg, grey=True
            )
            mark = time.perf_counter()
            poses = estimate_poses(left, right, clip_id, config=pose_config)
            extras: dict[str, np.ndarray] = {
                "pose_rms_px": np.asarray(poses.rms_px, np.float32),
                "pose_inlier_fraction": np.asarray(poses.inlier_fraction, np.float32),
                "pose_points": np.asarray(poses.num_points, np.int64),
                "calibration_vertical_px": np.asarray(calibration.median_vertical_px, np.float32),
                VIDEO_FORMAT_EXTRA: np.asarray(fmt.to_json()),
            }
            record = clip_record(
                clip_id,
                video_id,
                clip.timestamps,
                poses.camera2world,
                calibration.rectified2rig,
                calibration.fov_bounds,
                extras,
            )
            figures.setdefault("pose_seconds", {})[clip_id] = _since(mark)
        except Exception as error:  # noqa: BLE001 - one bad clip fails alone
            yield _failure(clip_id, error, "poses")
            continue
        yield record


def _since(start: float) -> float:
    """Seconds since `start` (perf_counter), rounded to ms."""
    return round(time.perf_counter() - start, 3)


def prepare_video(
    video_uri: str, video_id: str, output_uri: str, config: OwnVideoConfig | None = None
) -> VideoOutcome:
    """Prepare one video under `output_uri` (skipped when its outcome file exists): each good
    clip written as `OUTPUT/ownvideo/npz/<clip_id>.npz` as soon as it is posed."""
    done = outcome_uri(output_uri, video_id)
    if fs.exists(done):
        stored = VideoOutcome.from_json(fs.read_bytes(done).decode())
        if stored.version == PREPARE_VERSION:
            return stored
    outcome = VideoOutcome(video_id=video_id)
    folder = prepared_npz_folder(output_uri)
    kept = 0
    for item in video_clip_records(video_uri, video_id, output_uri, config, outcome.figures):
        if isinstance(item, PreparedFailure):
            outcome.failures.append(item)
        elif isinstance(item, str):  # written by an earlier, interrupted run
            outcome.npz_uris.append(fs.join(folder, f"{item}.npz"))
            kept += 1
        else:
            uri = fs.join(folder, f"{item.name}.npz")
            write_clip(item, uri)
            outcome.npz_uris.append(uri)
    outcome.figures["clips_kept_from_earlier_run"] = kept
    fs.write_bytes(done, outcome.to_json().encode())
    log.info(
        "own video %s: %d clips prepared, %d failures",
        video_id,
        len(outcome.npz_uris),
        len(outcome.failures),
    )
    return outcome


def list_videos(videos_uri: str) -> tuple[list[tuple[str, str]], list[PreparedFailure]]:
    """((video_id, uri) of every raw video under `videos_uri`, failures): any container of
    `io.video_lookup` in any letter case, ids from the file names; two files giving one id
    are one failure naming both."""
    videos, duplicates = video_lookup.list_videos(videos_uri)
    failures = [
        PreparedFailure(d.video_id, CLIPS_STAGE, type(d).__name__, str(d)) for d in duplicates
    ]
    return list(videos.items()), failures
