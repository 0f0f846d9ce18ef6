"""The engine's Ray Data graph and its run: one streamed dataset whose rows are clips, one
operator per entry of the stage list.

    clip rows ─▶ decode (CPU tasks) ─▶ StereoActor pool ─▶ SegmentationActor pool
              ─▶ TrackingActor pool ─▶ lift (CPU tasks) ─▶ OptimizeActor pool
              (batches of clips per jitted call) ─▶ write (each output format; a Parquet
              shard per batch)

`run_pipeline` = `output_guard` (path checks and the output's lease) around `run_clips`:
skip the clips already complete (`resume`), stream the others through the graph, write
`summary.json` and the one failures table. The command layer composes it with what comes
before and after (own videos as the graph's clip source, the report after:
`engine.command.run_job`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from s4d_ray.engine.clip_stages import input_rows
from s4d_ray.engine.config import PipelineConfig, StageResources, config_to_dict
from s4d_ray.engine.preflight import (
    check_cluster_resources,
    check_paths,
    prepare_output,
    remove_stale_temp_files,
)
from s4d_ray.engine.ray_connect import ensure_ray
from s4d_ray.engine.resume import completed_clip_ids, consolidate_failures
from s4d_ray.engine.rows import Row, clip_failure
from s4d_ray.engine.runner import actor_class, gpu_error_in, task_function
from s4d_ray.engine.stage_list import REDUCER, STAGES, Job, StageSpec
from s4d_ray.errors import JobAbortedError
from s4d_ray.io import fs
from s4d_ray.io.lease import OutputLease
from s4d_ray.io.writer import ClipFailure

log = logging.getLogger("s4d_ray.engine.pipeline")


SOURCE_TASK_RETRIES = 2
"""How often a clip source's read task (one own video) is run again after its worker or
node died."""


@dataclass
class SourcePlan:
    """What a clip source reads this run: a `ray.data.Datasource` whose rows are clips (after
    the source's `stages`, in the decode stage's output schema; None: nothing left to read),
    its read tasks' count and CPUs, the failures known before reading (reported with the
    run's) and the stages of its own."""

    datasource: Any | None
    tasks: int
    task_cpus: float
    failures: list[ClipFailure] = field(default_factory=list)
    stages: tuple[tuple[StageSpec, StageResources], ...] = ()
    """Stages run on the source's rows before the stage list's (own videos: `poses`), each
    with its resources."""


class ClipSource(Protocol):
    """Clips made by their source rather than listed as npz files (own videos:
    `ownvideo.source.OwnVideoSource`): it decodes them itself, so it takes the decode stage's
    place in the graph."""

    def plan(self, completed: set[str]) -> SourcePlan:
        """What to read, given the clip ids complete under the output."""
        ...


class TooManyFailuresError(JobAbortedError):
    """More clips failed than `max_failure_fraction` allows: likely a systemic error."""


def build_dataset(
    rows: list[Row],
    config: PipelineConfig,
    output: str,
    stages: Sequence[StageSpec] = STAGES,
    source: SourcePlan | None = None,
):
    """The streamed dataset of the whole pipeline, one operator per entry of `stages`;
    iterating it yields one summary row per clip (the write stage's output). With `source`
    (own videos), the clips come from its read tasks instead of `rows`, already decoded: the
    source takes the decode stage's place."""
    import ray.data
    from ray.data import ActorPoolStrategy, Dataset

    own = {spec.name: res for spec, res in source.stages} if source else {}
    job = Job(config, output, run_id=uuid.uuid4().hex, source_resources=own)
    ds: Dataset
    if source is not None:
        ds = ray.data.read_datasource(
            source.datasource,
            override_num_blocks=max(source.tasks, 1),
            # retried when its node is lost; the key also keeps Ray Data from fusing a long
            # read (a video's pass) into the first model's actors (fusion needs equal args)
            ray_remote_args={"num_cpus": source.task_cpus, "max_retries": SOURCE_TASK_RETRIES},
        )
        stages = [spec for spec, _ in source.stages] + [s for s in stages if s.name != "decode"]
    else:
        ds = ray.data.from_items(rows, override_num_blocks=max(len(rows), 1))
    for spec in stages:
        res = job.resources(spec.name)
        options: dict[str, Any] = {"num_cpus": res.num_cpus}
        if res.custom_resources:
            options["resources"] = dict(res.custom_resources)
        if spec.pooled:
            fn: Any = actor_class(spec.name)
            # Ray Data restarts dead pool actors and retries their tasks by default
            options.update(
                compute=ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
                num_gpus=res.num_gpus,
                fn_constructor_args=(spec, job),
            )
        else:
            fn = task_function(spec, job)
        if spec.kind == REDUCER:
            assert spec.batch_size is not None  # every reducer declares one
            ds = ds.map_batches(
                fn, batch_size=spec.batch_size(config), batch_format="numpy", **options
            )
        else:
            ds = ds.map(fn, **options)
    return ds


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
    track_counts: dict[str, float] = field(default_factory=dict)
    """Totals over done clips of `clip_stages.track_counts` (queries tracked, query·frames,
    tracks after each filter, `tracks_stored` in the npz files), plus
    `query_frames_per_stored_track` and `stored_fraction` (`with_ratios`)."""


def with_ratios(totals: Counter[str]) -> dict[str, float]:
    """Track-count totals plus the two ratios that show the tracker's wasted work: query·frames
    tracked per stored track, and stored tracks per tracked query. Stored = written to the npz
    (`tracks_stored`): the optimiser's mask empties tracks the lift filters kept (on a 200-frame
    CPU clip 21,159 of 47,856), so a ratio over the kept ones overstated each track's yield."""
    out: dict[str, float] = dict(sorted(totals.items()))
    stored, tracked = totals.get("tracks_stored", 0), totals.get("queries_tracked", 0)
    if stored and "queries_query_frames" in totals:
        out["query_frames_per_stored_track"] = round(totals["queries_query_frames"] / stored, 3)
    if tracked:
        out["stored_fraction"] = round(stored / tracked, 5)
    return out


@dataclass
class RunPlan:
    """What the driver knows before the dataset starts."""

    rows: list[Row]  # input rows of the clips to process
    rejected: list[Row]  # inputs failed before any stage (stage `input`: bad file names)
    completed: set[str]  # clips already complete under the output (skipped)


def plan_run(
    npz: str,
    output: str,
    videos: str = "",
    rectified: str = "",
    limit: int | None = None,
    config: PipelineConfig | None = None,
) -> RunPlan:
    """Everything `run_clips` does on the driver before the dataset starts: list the inputs
    (and the rectified videos), read which clips are complete in every output format
    `config` writes, build the clip rows. Listings and one dataset read, no call per clip
    (benchmarks/bench_startup.py)."""
    if not (videos or rectified):
        raise ValueError("give the raw video folder (--videos) or rectified videos (--rectified)")
    fs.makedirs(output)
    completed = completed_clip_ids(output, config)
    rows, rejected = input_rows(npz, videos, rectified, limit, frozenset(completed))
    return RunPlan(rows, rejected, completed)


@contextmanager
def output_guard(output: str, inputs: Mapping[str, str]) -> Iterator[None]:
    """Hold `output` for one run: it must not overlap an input (`inputs`: flag -> URI) and
    must be writable (OutputPathError), and no other live run may hold its lease
    (OutputBusyError; one run per output keeps every clip exactly once). Temp files of
    writers killed mid-write are removed under the lease, before the run and after it (a
    writer on a node lost mid-job leaves its temp file behind; its clip was written again
    elsewhere)."""
    check_paths(output, inputs)
    prepare_output(output)
    with OutputLease.acquire(output):
        remove_stale_temp_files(output)
        yield
        remove_stale_temp_files(output)


def run_pipeline(
    npz: str,
    output: str,
    config: PipelineConfig,
    videos: str = "",
    rectified: str = "",
    limit: int | None = None,
) -> RunSummary:
    """Process every not-yet-complete clip under `npz`; write outputs and `summary.json`
    (`run_clips` under `output_guard`)."""
    with output_guard(output, {"--npz": npz, "--videos": videos, "--rectified": rectified}):
        return run_clips(npz, output, config, videos, rectified, limit)


def run_clips(
    npz: str,
    output: str,
    config: PipelineConfig,
    videos: str = "",
    rectified: str = "",
    limit: int | None = None,
    source: ClipSource | None = None,
) -> RunSummary:
    """The run, under the output's guard (`output_guard`): the clips of `npz` not yet
    complete through the Ray Data graph — or, with `source`, the clips it makes (own videos:
    cut, posed and decoded in one pass per video); then `summary.json` and the failures
    table.

    Uses Ray as `ray_connect.connect_ray` finds it (initialised, `RAY_ADDRESS`, a live local
    cluster) or starts a local one, and logs which. Raises TooManyFailuresError when the
    failure fraction exceeds the configured limit (after the outputs so far are written).
    """
    start = time.perf_counter()
    read: SourcePlan | None = None
    failures: list[ClipFailure] = []
    if source is not None:
        completed = completed_clip_ids(output, config)
        read = source.plan(completed)
        failures += read.failures
        rows, rejected = [], []
    else:
        planned = plan_run(npz, output, videos, rectified, limit, config)
        rows, rejected, completed = planned.rows, planned.rejected, planned.completed
    summary = RunSummary(
        clips_skipped=len(completed), backend=config.backend, config=config_to_dict(config)
    )
    log.info(
        "%d clips to process, %d already complete, %d rejected inputs",
        len(rows),
        len(completed),
        len(rejected),
    )
    connected = ensure_ray()
    if connected:
        log.info("Ray: %s", connected)
    # a GPU stage on a GPU-less cluster, or pools that leave no CPU for decode, wait forever
    check_cluster_resources(config, frozenset(spec.name for spec in STAGES if spec.pooled))

    failures = [clip_failure(row) for row in rejected] + failures
    stage_seconds: Counter[str] = Counter()
    stage_counts: Counter[str] = Counter()
    track_totals: Counter[str] = Counter()
    aborted: TooManyFailuresError | None = None
    if rows or (read and read.datasource is not None):
        dataset = build_dataset(rows, config, output, source=read)
        if read is not None and limit is not None:
            dataset = dataset.limit(limit)
        for clip in _clips_out(dataset):
            if clip["status"] == "done":
                completed.add(str(clip["clip_id"]))  # every output format has it
                summary.clips_done += 1
                summary.frames_done += int(clip["num_frames"])
                summary.tracks_done += int(clip["num_tracks"])
                track_totals.update(json.loads(clip.get("track_counts") or "{}"))
                track_totals["tracks_stored"] += int(clip["num_tracks"])
                for stage, seconds in json.loads(clip["timings"]).items():
                    stage_seconds[stage] += seconds
                    stage_counts[stage] += 1
            else:
                failures.append(clip_failure(clip))
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
    order = [spec.name for spec in STAGES if stage_counts[spec.name]]
    order += sorted(set(stage_counts) - set(order))  # a source's own, e.g. own videos' `poses`
    summary.stage_seconds_per_clip = {
        stage: round(stage_seconds[stage] / stage_counts[stage], 4) for stage in order
    }
    summary.track_counts = with_ratios(track_totals)
    summary.wall_seconds = round(time.perf_counter() - start, 3)
    summary.clips_per_hour = (
        round(3600 * summary.clips_done / summary.wall_seconds, 2) if summary.wall_seconds else 0.0
    )
    consolidate_failures(output, failures, completed)
    with fs.open_atomic(fs.join(output, "summary.json"), "w") as f:
        f.write(json.dumps(summary.__dict__, indent=2, sort_keys=True))
    if aborted:
        raise aborted
    return summary


def _clips_out(dataset: Any) -> Iterator[dict[str, Any]]:
    """The dataset's output rows; a model actor that found no working CUDA on its GPU
    (`GpuUnavailableError` in its constructor, reported by Ray as a dead actor) stops the job
    with that error's one message instead of Ray's traceback."""
    try:
        yield from dataset.iter_rows()
    except Exception as error:
        gpu_error = gpu_error_in(error)
        if gpu_error is None:
            raise
        raise gpu_error from None
