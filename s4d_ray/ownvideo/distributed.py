"""Own-video mode of the job: raw VR180 videos → prepared release clips, one Ray task per video.

With no `--npz`, every `<video_id>.mp4` under `--videos` is split into clips, calibrated and
posed (`s4d_ray.ownvideo.prepare.prepare_video`) in parallel Ray tasks; the prepared clips
(`OUTPUT/ownvideo/npz/<clip_id>.npz`, cameras and rig, no tracks) then run through the normal
pipeline (`s4d_ray.engine.command.run_job` composes the two), and every video or clip that
could not be prepared becomes a failure row. Finished videos are skipped on a re-run (their
outcome file exists); a video whose task was killed midway resumes from its stored cut list
and calibration and poses only the clips not yet written (`ownvideo.prepare`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from s4d_ray.io.video import decode_threads
from s4d_ray.io.video_lookup import VIDEO_SUFFIXES
from s4d_ray.io.writer import ClipFailure
from s4d_ray.ownvideo.clips import ClipConfig
from s4d_ray.ownvideo.prepare import (
    VIDEO_TASK_CPUS,
    VIDEO_TIMEOUT_S,
    OwnVideoConfig,
    VideoOutcome,
    list_videos,
    prepare_video,
    prepared_npz_folder,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedVideos:
    """The npz folder to run the pipeline on, and what could not be prepared."""

    npz_folder: str
    failures: list[ClipFailure]
    clips: int
    videos: int


def own_video_config(
    min_clip_frames: int = 32,
    max_clip_frames: int = 200,
    timeout_s: float = VIDEO_TIMEOUT_S,
    fps: float = 0.0,
    task_cpus: float = VIDEO_TASK_CPUS,
) -> OwnVideoConfig:
    """Own-video settings from the job's flags (`fps` 0: the source rate, at most 30)."""
    clips = ClipConfig(min_clip_frames=min_clip_frames, max_clip_frames=max_clip_frames, fps=fps)
    return OwnVideoConfig(clips=clips, timeout_s=timeout_s, task_cpus=task_cpus)


def _video_failure(video_id: str, error: BaseException) -> ClipFailure:
    """The failure row of a video whose task raised (or died): named by the video id."""
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the task's exception
    stage = getattr(cause, "stage", "prepare")
    message = getattr(cause, "message", None) or str(cause) or repr(cause)
    return ClipFailure(video_id, stage, type(cause).__name__, message[:4000])


def _gather(pending: dict, timeout_s: float) -> tuple[list[VideoOutcome], list[ClipFailure]]:
    """Wait for every video task (`pending`: ref -> video id); a task that raises, dies or runs
    past `timeout_s` (0: no limit) becomes that video's failure row and is cancelled; the
    others go on."""
    import ray

    outcomes: list[VideoOutcome] = []
    failures: list[ClipFailure] = []
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    waiting = list(pending)
    while waiting:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, waiting = ray.wait(waiting, num_returns=1, timeout=left)
        if not done:  # the deadline passed: every video still running has timed out
            for ref in waiting:
                ray.cancel(ref, force=True)
                message = (
                    f"preparing the video took longer than {timeout_s:g} s (--video-timeout-s)"
                )
                failures.append(ClipFailure(pending[ref], "prepare", "StageTimeoutError", message))
                log.error("own video %s: %s", pending[ref], message)
            break
        ref = done[0]
        try:
            outcomes.append(ray.get(ref))
        except Exception as error:  # noqa: BLE001 - one bad video fails alone
            failure = _video_failure(pending[ref], error)
            log.error("own video %s failed: %s", failure.clip_id, failure.message)
            failures.append(failure)
    return outcomes, failures


def _prepare_task(
    video_uri: str, video_id: str, output_uri: str, config: OwnVideoConfig
) -> VideoOutcome:
    """One video's Ray task: `prepare_video`, FFmpeg's threads within the task's CPUs."""
    with decode_threads(math.floor(config.task_cpus)):
        return prepare_video(video_uri, video_id, output_uri, config)


def prepare_videos(videos: str, output: str, config: OwnVideoConfig) -> PreparedVideos:
    """Prepare every video under `videos` in Ray tasks (Ray must be initialised). A video
    whose task fails or times out is one failure row; the other videos go on."""
    import ray

    listed, duplicates = list_videos(videos)
    if not listed and not duplicates:
        raise FileNotFoundError(
            f"no video ({', '.join(VIDEO_SUFFIXES)}) under {videos!r} "
            "(own-video mode: --videos without --npz)"
        )
    task = ray.remote(_prepare_task).options(num_cpus=config.task_cpus, max_retries=1)
    pending = {task.remote(uri, video_id, output, config): video_id for video_id, uri in listed}
    outcomes, failures = _gather(pending, config.timeout_s)
    failures += [
        ClipFailure(f.clip_id, f.stage, f.error_type, f.message)
        for f in [*duplicates, *(f for outcome in outcomes for f in outcome.failures)]
    ]
    clips = sum(len(o.npz_uris) for o in outcomes)
    log.info(
        "own videos: %d videos, %d clips prepared, %d failures", len(listed), clips, len(failures)
    )
    return PreparedVideos(
        prepared_npz_folder(output), failures, clips, len(listed) + len(duplicates)
    )
