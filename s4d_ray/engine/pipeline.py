"""The engine: one streamed Ray Data dataset whose rows are clips, built from the stage list.

    clip rows ─▶ decode (CPU tasks) ─▶ StereoActor pool ─▶ TrackingActor pool
              ─▶ SegmentationActor pool ─▶ lift (CPU tasks) ─▶ OptimizeActor pool
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
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from s4d_ray.engine.clip_stages import Row, batch_to_rows, input_rows, rows_to_batch
from s4d_ray.engine.config import PipelineConfig, config_to_dict
from s4d_ray.engine.own_videos import prepare_videos
from s4d_ray.engine.preflight import (
    check_cluster_resources,
    check_paths,
    prepare_output,
    remove_stale_temp_files,
)
from s4d_ray.engine.runner import actor_class, apply, gpu_error_in, task_function
from s4d_ray.engine.stage_list import REDUCER, STAGES, Job, is_pool
from s4d_ray.errors import JobAbortedError
from s4d_ray.io import fs
from s4d_ray.io.clip_io import npz_stem
from s4d_ray.io.dense import dense_clip_ids
from s4d_ray.io.lease import OutputLease
from s4d_ray.io.writer import (
    FAILURES_DIR,
    NPZ_DIR,
    PARQUET_DIR,
    ClipFailure,
    read_failures,
    write_failures,
)
from s4d_ray.ownvideo.prepare import OwnVideoConfig

log = logging.getLogger("s4d_ray.engine.pipeline")

FAILURES_NAME = "shard-all"


class TooManyFailuresError(JobAbortedError):
    """More clips failed than `max_failure_fraction` allows: likely a systemic error."""


def _arrow_filesystem(filesystem: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """pyarrow's own filesystem for local paths (native, multi-threaded), else the fsspec one
    wrapped (gcsfs with its emulator and anonymous-access options, memory://)."""
    if isinstance(filesystem, LocalFileSystem):
        return pafs.LocalFileSystem()
    # pyarrow-stubs declare FSSpecHandler abstract; it implements every handler method
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))  # type: ignore[abstract]


SHARDS_PER_READ = 1000
"""Shards per pyarrow dataset read: one dataset keeps ~100 kB of metadata per fragment until
it is dropped, so 14,000 shards in one would peak at ~1.5 GB; 1,000 at a time stay ~0.3 GB
at the same speed (benchmarks/bench_startup.py)."""


def clip_ids_in_shards(folder: str) -> set[str]:
    """The `name` column of every Parquet shard in `folder`, read as pyarrow datasets.

    One listing, then pyarrow reads each shard's footer and name column chunk on its thread
    pool, `SHARDS_PER_READ` shards per dataset (no schema inference: the fragments are made
    from the listed paths directly).
    """
    filesystem, paths = fs.list_paths(folder, ".parquet")
    names: set[str] = set()
    if not paths:
        return names
    arrow_fs = _arrow_filesystem(filesystem)
    schema = pa.schema([("name", pa.string())])
    for start in range(0, len(paths), SHARDS_PER_READ):
        dataset = pads.FileSystemDataset.from_paths(
            paths[start : start + SHARDS_PER_READ],
            schema=schema,
            format=pads.ParquetFileFormat(),
            filesystem=arrow_fs,
        )
        column = dataset.to_table(columns=["name"]).column("name")
        names.update(name for name in column.to_pylist() if name is not None)  # no null ids
    return names


def completed_clip_ids(output: str, dense: bool = False) -> set[str]:
    """Clips with an npz and a row in some Parquet shard under `output` (two listings and the
    shards' name columns read as datasets: 110,000 clips in 14,000 shards take ~11 s of CPU,
    see benchmarks/bench_startup);
    with `dense`, also every dense file (one more listing): a clip done without `--dense` is
    redone by a `--dense` run."""
    _, npz_paths = fs.list_paths(fs.join(output, NPZ_DIR), ".npz")
    npz = {npz_stem(p) for p in npz_paths}
    done = npz & clip_ids_in_shards(fs.join(output, PARQUET_DIR))
    return done & dense_clip_ids(output) if dense else done


def build_dataset(rows: list[Row], config: PipelineConfig, output: str):
    """The streamed dataset of the whole pipeline, one operator per entry of the stage list;
    iterating it yields one summary row per clip (the write stage's output)."""
    import ray.data
    from ray.data import ActorPoolStrategy, Dataset

    job = Job(config, output)
    ds: Dataset = ray.data.from_items(rows, override_num_blocks=max(len(rows), 1))
    for spec in STAGES:
        res = config.resources(spec.name)
        options: dict[str, Any] = {"num_cpus": res.num_cpus}
        if res.custom_resources:
            options["resources"] = dict(res.custom_resources)
        if is_pool(spec):
            fn: Any = actor_class(spec.name)
            # Ray Data restarts dead pool actors and retries their tasks by default
            options.update(
                compute=ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
                num_gpus=res.num_gpus,
                fn_constructor_args=(job,),
            )
        else:
            fn = task_function(spec.name, job)
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
    dense: bool = False,
) -> RunPlan:
    """Everything `run_pipeline` does on the driver before the dataset starts: list the inputs
    (and the rectified videos), read which clips are complete, build the clip rows. Listings
    and one dataset read, no call per clip (benchmarks/bench_startup.py)."""
    if not (videos or rectified):
        raise ValueError("give the raw video folder (--videos) or rectified videos (--rectified)")
    fs.makedirs(output)
    completed = completed_clip_ids(output, dense)
    rows, rejected = input_rows(npz, videos, rectified, limit, frozenset(completed))
    return RunPlan(rows, rejected, completed)


def _write_report(output: str) -> None:
    """OUTPUT/report.html from the run's outputs; a report that fails never fails the run."""
    from s4d_ray.viz.report import write_report

    try:
        log.info("run report: %s", write_report(output))
    except Exception:
        log.exception("could not write the run report under %s", output)


def local_cluster_address() -> str | None:
    """The GCS address of a live local Ray cluster (`ray start` on this machine), or None.

    Ray records the last `ray start` in `<RAY_TMPDIR or /tmp>/ray/ray_current_cluster`; a
    cluster that was killed leaves the file behind, so the address counts only if something
    accepts a TCP connection there within a second.
    """
    import ray._private.utils as ray_utils

    address = ray_utils.read_ray_address()
    if not address or ":" not in address:
        return None
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except (OSError, ValueError):
        return None
    return address


def connect_ray() -> str:
    """Initialise Ray for a run and say how: `RAY_ADDRESS` if set; else the live local
    cluster if one answers; else a fresh local cluster (a stale `ray_current_cluster` file
    is ignored). Returns a line for the log."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return f"connected to RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
    address = local_cluster_address()
    if address:
        ray.init(address=address)
        return f"connected to the running local cluster at {address}"
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 4))
    return "started a fresh local cluster (no live one found)"


def run_pipeline(
    npz: str,
    output: str,
    config: PipelineConfig,
    videos: str = "",
    rectified: str = "",
    limit: int | None = None,
    own_videos: OwnVideoConfig | None = None,
) -> RunSummary:
    """Process every not-yet-complete clip under `npz`; write outputs and `summary.json`.

    With `own_videos` (and no `npz`): every `<video_id>.mp4` under `videos` is first split,
    calibrated and posed in Ray tasks (`engine.own_videos`), and the prepared clips are run.

    Uses Ray as `connect_ray` finds it (initialised, `RAY_ADDRESS`, a live local cluster)
    or starts a local one, and logs which. Raises TooManyFailuresError when the failure fraction exceeds the
    configured limit (after the outputs so far are written).

    Before anything runs: the output must not overlap an input and must be writable
    (OutputPathError), and no other live run may hold its lease (OutputBusyError; one run
    per output keeps every clip exactly once). Temp files of writers killed mid-write are
    removed under the lease, before the run and after it (a writer on a node lost mid-job
    leaves its temp file behind; its clip was written again elsewhere).
    """
    check_paths(output, {"--npz": npz, "--videos": videos, "--rectified": rectified})
    prepare_output(output)
    with OutputLease.acquire(output):
        remove_stale_temp_files(output)
        summary = _run_pipeline(npz, output, config, videos, rectified, limit, own_videos)
        remove_stale_temp_files(output)
        return summary


def _run_pipeline(
    npz: str,
    output: str,
    config: PipelineConfig,
    videos: str,
    rectified: str,
    limit: int | None,
    own_videos: OwnVideoConfig | None = None,
) -> RunSummary:
    import ray

    start = time.perf_counter()
    prepared_failures: list[ClipFailure] = []
    if own_videos is not None:  # own-video mode: videos -> posed release clips first
        if not ray.is_initialized():
            log.info("Ray: %s", connect_ray())
        prepared = prepare_videos(videos, output, own_videos)
        npz, prepared_failures = prepared.npz_folder, prepared.failures
    if own_videos is not None and not fs.list_files(npz, ".npz"):
        plan = RunPlan([], [], completed_clip_ids(output, config.dense))  # no usable clip
    else:
        plan = plan_run(npz, output, videos, rectified, limit, config.dense)
    rows, rejected, completed = plan.rows, plan.rejected, plan.completed
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
        log.info("Ray: %s", connect_ray())
    # a GPU stage on a GPU-less cluster, or pools that leave no CPU for decode, wait forever
    check_cluster_resources(config, frozenset(spec.name for spec in STAGES if is_pool(spec)))

    failures = [
        ClipFailure(r["clip_id"], r["error_stage"], r["error_type"], r["error_message"])
        for r in rejected
    ] + prepared_failures
    stage_seconds: Counter[str] = Counter()
    stage_counts: Counter[str] = Counter()
    track_totals: Counter[str] = Counter()
    aborted: TooManyFailuresError | None = None
    if rows:
        for clip in _clips_out(build_dataset(rows, config, output)):
            if clip["status"] == "done":
                completed.add(str(clip["clip_id"]))  # its npz and shard row are written
                summary.clips_done += 1
                summary.frames_done += int(clip["num_frames"])
                summary.tracks_done += int(clip["num_tracks"])
                track_totals.update(json.loads(clip.get("track_counts") or "{}"))
                track_totals["tracks_stored"] += int(clip["num_tracks"])
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
        for stage in [spec.name for spec in STAGES]
        if stage_counts[stage]
    }
    summary.track_counts = with_ratios(track_totals)
    summary.wall_seconds = round(time.perf_counter() - start, 3)
    summary.clips_per_hour = (
        round(3600 * summary.clips_done / summary.wall_seconds, 2) if summary.wall_seconds else 0.0
    )
    _consolidate_failures(output, failures, completed)
    with fs.open_atomic(fs.join(output, "summary.json"), "w") as f:
        f.write(json.dumps(summary.__dict__, indent=2, sort_keys=True))
    _write_report(output)
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


def run_in_process(rows: list[Row], config: PipelineConfig, output: str) -> list[dict[str, Any]]:
    """Every stage of every clip, one after another in this process, no Ray: the same stage
    list, set-ups and transforms as the dataset. For debugging a clip, and the baseline the
    streaming benchmark compares against. Returns the write stage's summary rows."""
    job = Job(config, output)
    contexts = {spec.name: spec.setup(job) for spec in STAGES}
    summaries: list[dict[str, Any]] = []
    for row in rows:
        item: Any = row
        batched = False
        for spec in STAGES:
            if (spec.kind == REDUCER) != batched:  # one clip as a batch of one, or back
                item = batch_to_rows(item)[0] if batched else rows_to_batch([item])
                batched = not batched
            item = apply(spec, contexts[spec.name], item, config.resources(spec.name).timeout_s)
        summaries += batch_to_rows(item) if batched else [item]
    return summaries
