"""Own-video mode of the job: raw VR180 videos → prepared release clips, one Ray task per video.

With no `--npz`, every `<video_id>.mp4` under `--videos` is split into clips, calibrated and
posed (`s4d_ray.ownvideo.prepare.prepare_video`) in parallel Ray tasks; the prepared clips
(`OUTPUT/ownvideo/npz/<clip_id>.npz`, cameras and rig, no tracks) then run through the normal
pipeline, and every video or clip that could not be prepared becomes a failure row. Finished
videos are skipped on a re-run (their outcome file exists).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from s4d_ray.io.writer import ClipFailure
from s4d_ray.ownvideo.clips import ClipConfig
from s4d_ray.ownvideo.prepare import (
    OwnVideoConfig,
    VideoOutcome,
    list_videos,
    prepare_video,
    prepared_npz_folder,
)

log = logging.getLogger(__name__)

PREPARE_CPUS = 0.5
"""Logical CPUs per video task: fractional, so the tasks never starve each other on a small
machine (DESIGN.md §5)."""


@dataclass(frozen=True)
class PreparedVideos:
    """The npz folder to run the pipeline on, and what could not be prepared."""

    npz_folder: str
    failures: list[ClipFailure]
    clips: int
    videos: int


def own_video_config(min_clip_frames: int = 32, max_clip_frames: int = 200) -> OwnVideoConfig:
    """Own-video settings from the job's flags."""
    return OwnVideoConfig(
        clips=ClipConfig(min_clip_frames=min_clip_frames, max_clip_frames=max_clip_frames)
    )


def prepare_videos(videos: str, output: str, config: OwnVideoConfig) -> PreparedVideos:
    """Prepare every video under `videos` in Ray tasks (Ray must be initialised)."""
    import ray

    listed = list_videos(videos)
    if not listed:
        raise FileNotFoundError(
            f"no <video_id>.mp4 under {videos!r} (own-video mode: --videos without --npz)"
        )
    task = ray.remote(num_cpus=PREPARE_CPUS, max_retries=1)(prepare_video)
    pending = [task.remote(uri, video_id, output, config) for video_id, uri in listed]
    outcomes: list[VideoOutcome] = ray.get(pending)
    failures = [
        ClipFailure(f.clip_id, f.stage, f.error_type, f.message)
        for outcome in outcomes
        for f in outcome.failures
    ]
    clips = sum(len(o.npz_uris) for o in outcomes)
    log.info(
        "own videos: %d videos, %d clips prepared, %d failures", len(listed), clips, len(failures)
    )
    return PreparedVideos(prepared_npz_folder(output), failures, clips, len(listed))
