"""Engine metrics through `ray.util.metrics`, exported by Ray as `ray_s4d_*` on each node's
metrics endpoint (`ray start --metrics-export-port`) while the job runs, and shown in the
dashboard's Metrics view when Prometheus/Grafana are attached.

    s4d_clips_completed, s4d_clips_failed{stage}, s4d_frames_processed,
    s4d_tracks_processed, s4d_stage_seconds{stage} (histogram),
    s4d_video_frames_decoded{video_id}, s4d_video_clips_cut{video_id},
    s4d_video_clips_posed{video_id} (own videos: each video's pass as it goes)
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

STAGE_SECONDS_BOUNDARIES = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]
VIDEO_PROGRESS = (
    ("frames", "frames_decoded", "frames decoded by the pass"),
    ("cut", "clips_cut", "clips cut"),
    ("posed", "clips_posed", "clips posed"),
)
"""(what `ownvideo.prepare` reports, metric name, description) of the per-video counters."""


@cache
def _metrics() -> dict[str, Any]:
    from ray.util import metrics

    return {
        "completed": metrics.Counter("s4d_clips_completed", description="clips written"),
        "failed": metrics.Counter(
            "s4d_clips_failed", description="clips that failed", tag_keys=("stage",)
        ),
        "frames": metrics.Counter("s4d_frames_processed", description="frames of written clips"),
        "tracks": metrics.Counter("s4d_tracks_processed", description="3D tracks written"),
        "seconds": metrics.Histogram(
            "s4d_stage_seconds",
            description="seconds per clip in each stage",
            boundaries=STAGE_SECONDS_BOUNDARIES,
            tag_keys=("stage",),
        ),
        **{
            f"video_{what}": metrics.Counter(
                f"s4d_video_{name}",
                description=f"own videos: {description}, per video",
                tag_keys=("video_id",),
            )
            for what, name, description in VIDEO_PROGRESS
        },
    }


def record_stage_seconds(stage: str, seconds: float) -> None:
    _metrics()["seconds"].observe(seconds, tags={"stage": stage})


def record_stage_from_row(row: dict[str, Any], stage: str) -> None:
    """Observe the time a row spent in `stage`, if the stage ran on it."""
    seconds = json.loads(row.get("timings") or "{}").get(stage)
    if seconds is not None:
        record_stage_seconds(stage, seconds)


def record_clip_written(num_frames: int, num_tracks: int) -> None:
    m = _metrics()
    m["completed"].inc()
    for name, value in (("frames", num_frames), ("tracks", num_tracks)):
        if value > 0:  # Ray counters refuse increments of 0
            m[name].inc(value)


def record_video_progress(video_id: str, what: str, amount: int) -> None:
    """Count `amount` of `what` ("frames", "cut", "posed") for one own video's pass."""
    if amount > 0:
        _metrics()[f"video_{what}"].inc(amount, tags={"video_id": video_id})


def record_clip_failed(stage: str) -> None:
    _metrics()["failed"].inc(tags={"stage": stage})


def report_written(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Count each written clip and log one line per clip (done or failed) in the job log; Ray
    forwards worker stdout to the driver. Returns `summaries` (the write stage's output)."""
    for summary in summaries:
        if summary["status"] == "done":
            record_clip_written(summary["num_frames"], summary["num_tracks"])
            outcome = f"{summary['num_frames']} frames, {summary['num_tracks']} tracks"
        else:
            outcome = (
                f"in {summary['error_stage']}: {summary['error_type']}: "
                f"{summary['error_message'][:200]}"
            )
        print(f"s4d clip {summary['clip_id']} {summary['status']}: {outcome}", flush=True)
    return summaries
