"""The engine: one streamed Ray Data dataset whose rows are clips.

    clip rows ─▶ decode+rectify (CPU tasks) ─▶ StereoActor pool ─▶ TrackingActor pool
              ─▶ SegmentationActor pool ─▶ lift+filter (CPU tasks) ─▶ OptimizerActor pool
              (batches of clips per jitted call) ─▶ write (npz per clip, Parquet per batch)

Resume: a clip is complete when its npz exists *and* its row is in a Parquet shard; complete
clips are skipped, so a re-run (after a kill, or with more inputs) does only what is missing
and never writes a clip twice (names are deterministic). Failed clips are retried on the next
run; `failures/failures-all.parquet` always lists the clips whose latest attempt failed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from s4d_ray import fs
from s4d_ray.clip_io import npz_stem
from s4d_ray.clip_stages import (
    DECODE,
    LIFT,
    STAGES,
    Row,
    batch_to_rows,
    decode_and_rectify,
    input_rows,
    lift_and_filter,
    rows_to_batch,
    write_rows,
)
from s4d_ray.config import PipelineConfig, config_to_dict
from s4d_ray.writer import (
    FAILURES_DIR,
    NPZ_DIR,
    PARQUET_DIR,
    ClipFailure,
    read_failures,
    write_failures,
)

log = logging.getLogger("s4d_ray.pipeline")

FAILURES_NAME = "shard-all"


class TooManyFailuresError(RuntimeError):
    """More clips failed than `max_failure_fraction` allows: likely a systemic error."""


def completed_clip_ids(output: str) -> set[str]:
    """Clips with an npz and a row in some Parquet shard under `output`."""
    npz = {npz_stem(u) for u in fs.list_files(fs.join(output, NPZ_DIR), ".npz")}
    in_shards: set[str] = set()
    for uri in fs.list_files(fs.join(output, PARQUET_DIR), ".parquet"):
        filesystem, path = fs.filesystem(uri)
        with filesystem.open(path, "rb") as f:
            in_shards.update(pq.read_table(f, columns=["name"]).column("name").to_pylist())
    return npz & in_shards


# --- CPU tasks (the model stages are actors in actors/) ------------------------------------


def _decode_task(row: Row) -> Row:
    from actors._common import apply_stage

    return apply_stage(row, DECODE, decode_and_rectify)


def _lift_task(row: Row, min_tracks: int) -> Row:
    from actors._common import apply_stage

    return apply_stage(row, LIFT, lambda r: lift_and_filter(r, min_tracks=min_tracks))


def _write_task(batch: dict[str, np.ndarray], output: str) -> dict[str, np.ndarray]:
    from s4d_ray import metrics

    summaries = write_rows(batch_to_rows(batch), output)
    for summary in summaries:
        if summary["status"] == "done":
            metrics.record_clip_written(summary["num_frames"], summary["num_tracks"])
            metrics.record_stage_from_row(summary, "write")
        elif summary["error_stage"] == "write":
            metrics.record_clip_failed("write")
        if summary["status"] == "failed":
            outcome = f"in {summary['error_stage']}: {summary['error_type']}: {summary['error_message'][:200]}"
        else:
            outcome = f"{summary['num_frames']} frames, {summary['num_tracks']} tracks"
        # one line per clip in the job log (Ray forwards worker stdout to the driver)
        print(f"s4d clip {summary['clip_id']} {summary['status']}: {outcome}", flush=True)
    return rows_to_batch(summaries)


def build_dataset(rows: list[Row], config: PipelineConfig, output: str):
    """The streamed dataset of the whole pipeline; iterating it yields one summary per clip."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from actors.optimizer import OptimizerActor
    from actors.segmentation import SegmentationActor
    from actors.stereo import StereoActor
    from actors.tracking import TrackingActor

    def pool(stage: str) -> dict[str, Any]:
        res = config.resources(stage)
        return {
            "compute": ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
            "num_cpus": res.num_cpus,
            "num_gpus": res.num_gpus,
        }  # Ray Data restarts dead pool actors and retries their tasks by default

    models = config.models
    common = {"device": models.device, "precision": models.precision}
    ds = ray.data.from_items(rows, override_num_blocks=max(len(rows), 1))
    ds = ds.map(_decode_task, num_cpus=config.resources("decode").num_cpus)
    for actor, stage, options in (
        (StereoActor, "stereo", models.stereo),
        (TrackingActor, "tracking", models.tracking),
        (SegmentationActor, "segmentation", models.segmentation),
    ):
        ds = ds.map(
            actor,
            fn_constructor_args=(config.backend, options),
            fn_constructor_kwargs=common,
            **pool(stage),
        )
    ds = ds.map(
        _lift_task,
        fn_kwargs={"min_tracks": config.min_tracks},
        num_cpus=config.resources("lift").num_cpus,
    )
    ds = ds.map_batches(
        OptimizerActor,
        batch_size=config.optimizer.clips_per_batch,
        batch_format="numpy",
        fn_constructor_kwargs={"num_steps": config.optimizer.num_steps},
        **pool("optimize"),
    )
    return ds.map_batches(
        _write_task,
        batch_size=config.clips_per_shard,
        batch_format="numpy",
        fn_kwargs={"output": output},
        num_cpus=config.resources("write").num_cpus,
    )


@dataclass
class RunSummary:
    """What a run did: counts, failures by stage, seconds per stage per clip, throughput."""

    clips_done: int = 0
    clips_failed: int = 0
    clips_skipped: int = 0
    failures_by_stage: dict[str, int] = field(default_factory=dict)
    stage_seconds_per_clip: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    clips_per_hour: float = 0.0
    frames_done: int = 0
    tracks_done: int = 0
    backend: str = ""
    config: dict[str, Any] = field(default_factory=dict)


def _consolidate_failures(
    output: str, run_failures: list[ClipFailure], completed: set[str]
) -> str | None:
    """One failures table: earlier failures of clips still not complete, replaced by this
    run's failure of the same clip; the per-run files it supersedes are removed."""
    folder = fs.join(output, FAILURES_DIR)
    old_files = fs.list_files(folder, ".parquet")
    by_clip = {f.clip_id: f for uri in old_files for f in read_failures(uri)}
    by_clip.update({f.clip_id: f for f in run_failures})
    keep = [f for clip_id, f in sorted(by_clip.items()) if clip_id not in completed]
    written = write_failures(keep, output, FAILURES_NAME)
    for uri in old_files:
        if uri != written:
            filesystem, path = fs.filesystem(uri)
            filesystem.rm(path)
    return written


def run_pipeline(
    npz: str,
    output: str,
    config: PipelineConfig,
    videos: str = "",
    rectified: str = "",
    limit: int | None = None,
) -> RunSummary:
    """Process every not-yet-complete clip under `npz`; write outputs and `summary.json`.

    Connects to a running Ray cluster if one is initialised or `RAY_ADDRESS` is set, else
    starts a local one. Raises TooManyFailuresError when the failure fraction exceeds the
    configured limit (after the outputs so far are written).
    """
    import ray

    if not (videos or rectified):
        raise ValueError("give the raw video folder (--videos) or rectified videos (--rectified)")
    start = time.perf_counter()
    fs.makedirs(output)
    completed = completed_clip_ids(output)
    rows, rejected = input_rows(npz, videos, rectified, limit, frozenset(completed))
    summary = RunSummary(
        clips_skipped=len(completed), backend=config.backend, config=config_to_dict(config)
    )
    log.info(
        "%d clips to process, %d already complete, %d rejected inputs",
        len(rows),
        len(completed),
        len(rejected),
    )
    if not ray.is_initialized():
        ray.init(
            **({} if os.environ.get("RAY_ADDRESS") else {"num_cpus": max(os.cpu_count() or 1, 4)})
        )

    failures = [
        ClipFailure(r["clip_id"], r["error_stage"], r["error_type"], r["error_message"])
        for r in rejected
    ]
    stage_seconds: Counter[str] = Counter()
    stage_counts: Counter[str] = Counter()
    aborted: TooManyFailuresError | None = None
    if rows:
        for clip in build_dataset(rows, config, output).iter_rows():
            if clip["status"] == "done":
                completed.add(str(clip["clip_id"]))  # its npz and shard row are written
                summary.clips_done += 1
                summary.frames_done += int(clip["num_frames"])
                summary.tracks_done += int(clip["num_tracks"])
                for stage, seconds in json.loads(clip["timings"]).items():
                    stage_seconds[stage] += seconds
                    stage_counts[stage] += 1
            else:
                failures.append(
                    ClipFailure(
                        str(clip["clip_id"]),
                        str(clip["error_stage"]),
                        str(clip["error_type"]),
                        str(clip["error_message"]),
                    )
                )
            processed = summary.clips_done + len(failures)
            if (
                processed >= config.failure_check_after
                and len(failures) > config.max_failure_fraction * processed
            ):
                aborted = TooManyFailuresError(
                    f"{len(failures)} of {processed} clips failed (limit {config.max_failure_fraction:.0%}); "
                    f"first: {failures[0].clip_id} in {failures[0].stage}: {failures[0].message[:300]}"
                )
                break
    summary.clips_failed = len(failures)
    summary.failures_by_stage = dict(Counter(f.stage for f in failures))
    summary.stage_seconds_per_clip = {
        stage: round(stage_seconds[stage] / stage_counts[stage], 4)
        for stage in [s.name for s in STAGES] + ["write"]
        if stage_counts[stage]
    }
    summary.wall_seconds = round(time.perf_counter() - start, 3)
    summary.clips_per_hour = (
        round(3600 * summary.clips_done / summary.wall_seconds, 2) if summary.wall_seconds else 0.0
    )
    _consolidate_failures(output, failures, completed)
    with fs.open_atomic(fs.join(output, "summary.json"), "w") as f:
        f.write(json.dumps(summary.__dict__, indent=2, sort_keys=True))
    if aborted:
        raise aborted
    return summary


def run_in_process(rows: list[Row], config: PipelineConfig, output: str) -> list[dict[str, Any]]:
    """Every stage of every clip, one after another in this process, no Ray: the same actor
    classes and tasks as the dataset. For debugging a clip, and the baseline the streaming
    benchmark compares against. Returns the write stage's summary rows."""
    from actors.optimizer import OptimizerActor
    from actors.segmentation import SegmentationActor
    from actors.stereo import StereoActor
    from actors.tracking import TrackingActor

    models = config.models
    common = {"device": models.device, "precision": models.precision}
    stereo = StereoActor(config.backend, models.stereo, **common)
    tracker = TrackingActor(config.backend, models.tracking, **common)
    segmenter = SegmentationActor(config.backend, models.segmentation, **common)
    optimizer = OptimizerActor(num_steps=config.optimizer.num_steps)
    summaries = []
    for row in rows:
        row = _lift_task(segmenter(tracker(stereo(_decode_task(row)))), config.min_tracks)
        (row,) = batch_to_rows(optimizer(rows_to_batch([row])))
        summaries += batch_to_rows(_write_task(rows_to_batch([row]), output))
    return summaries
