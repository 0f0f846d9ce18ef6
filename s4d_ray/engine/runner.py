"""Running one entry of the stage list on clips: set up once, then per clip (or batch), with
failure capture, column checks (`rows`) and metrics. The same objects serve Ray Data
(callable classes in actor pools, functions for tasks) and the in-process runner
(`run_in_process`).

A call stuck in C code: a per-clip call past its stage's `timeout_s` is told to stop
(`call_with_timeout`) and the clip becomes a StageTimeoutError failure row. A call that does
not stop within `STOP_GRACE_S` (a C call holds the thread; Python cannot interrupt it) would
run on beside the worker's next clip, so the Ray worker that holds it exits: at the start of
its next call, or after `IDLE_EXIT_S` when none comes, whichever is first — after the stuck
clip's failure row has been returned. Ray then replaces it: Ray Data restarts a dead pool
actor and retries the calls it had queued (`max_restarts` and `max_task_retries` are -1 for
pool actors, `max_retries` -1 for tasks), so no other clip is lost. Those retries are
unbounded, so should a stuck clip's own call ever be retried (its worker died before the row
reached Ray), it could loop through workers forever: every worker a clip leaves stuck is
counted in the node's temp folder (per run, `stuck_count`), and a clip that has left
`STUCK_LIMIT` workers stuck on a node is failed there without running again. The in-process
runner never exits: the clip's failure row is recorded and the thread is left behind (logged).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import cache, partial
from typing import Any

import numpy as np

from s4d_ray.engine import metrics
from s4d_ray.engine.config import PipelineConfig
from s4d_ray.engine.rows import (
    Row,
    batch_to_rows,
    failed,
    mark_failed,
    record_placement,
    rows_to_batch,
    run_batch,
    run_stage,
)
from s4d_ray.engine.stage_list import REDUCER, STAGES, Job, StageSpec, actor_name
from s4d_ray.errors import S4DError
from s4d_ray.models.device import GpuUnavailableError, check_assigned_gpus

Batch = dict[str, np.ndarray]
log = logging.getLogger("s4d_ray.engine.runner")


def worker_placement(stage: str, job: Job) -> dict[str, Any]:
    """Where this Ray worker runs `stage`: node id and IP, worker (actor id or task pid), the
    stage's GPU share, Ray's GPU ids, CUDA_VISIBLE_DEVICES and the device the models use —
    checked (`check_assigned_gpus`): a GPU without working CUDA stops the job unless
    `models.allow_cpu_fallback`, which is logged loudly here."""
    import ray

    context = ray.get_runtime_context()
    node_id, node_ip = context.get_node_id(), ray.util.get_node_ip_address()
    record = check_assigned_gpus(
        ray.get_gpu_ids(),
        f"stage {stage!r} on node {node_id} ({node_ip})",
        job.config.models.allow_cpu_fallback,
    )
    record.update(
        node_id=node_id,
        node_ip=node_ip,
        worker=context.get_actor_id() or f"task pid {os.getpid()}",
        num_gpus=job.resources(stage).num_gpus,
    )
    if record["cpu_fallback"]:
        log.warning(
            "CPU FALLBACK: stage %r was given GPU ids %s on node %s but CUDA does not work "
            "(%s); its models run on the CPU because models.allow_cpu_fallback is true",
            stage,
            record["ray_gpu_ids"],
            node_ip,
            record["cuda"]["allocation_error"],
        )
    return record


def on_cpu(job: Job) -> Job:
    """`job` with `models.device` set to 'cpu' (a GPU actor falling back)."""
    config = job.config
    models = dataclasses.replace(config.models, device="cpu")
    return dataclasses.replace(job, config=dataclasses.replace(config, models=models))


_RAISED_GPU_ERROR = re.compile(rf"{GpuUnavailableError.__name__}: (.+)")


def gpu_error_in(error: BaseException) -> GpuUnavailableError | None:
    """The GpuUnavailableError an actor raised in its constructor, out of the Ray error the
    driver gets for it (Ray Data reports a dead pool actor as an ActorDiedError whose message
    carries the actor's traceback, not the exception), or None."""
    found = _RAISED_GPU_ERROR.search(str(error))
    return GpuUnavailableError(found.group(1).strip()) if found else None


def _record_outcome(
    row: Row, spec: StageSpec, was_failed: bool, placement: dict[str, Any] | None
) -> None:
    """Metrics of one clip after `spec` (its seconds, or a failure if it failed right there),
    and where it ran (`placement`, a Ray worker's) in the metadata of a clip that is done."""
    if was_failed:
        return
    if failed(row):
        metrics.record_clip_failed(spec.name)
        return
    metrics.record_stage_from_row(row, spec.name)
    if placement is not None:
        record_placement(row, spec.name, placement)


class StageTimeoutError(S4DError, TimeoutError):
    """A clip spent longer in a stage than the stage's `timeout_s`."""


STOP_GRACE_S = 5.0
"""Seconds a call past its timeout gets to stop once told to; one still running after that
is stuck in C code."""
EXIT_PAUSE_S = 1.0
"""A worker with a stuck call waits this long at the start of its next call before it exits,
so the reply of its previous call (the stuck clip's failure row) has left the process."""
IDLE_EXIT_S = 30.0
"""A worker with a stuck call exits this long after it when no next call comes first."""
STUCK_LIMIT = 2
"""Workers one clip may leave stuck (on one node) before it is failed without running."""
STUCK_EXIT_CODE = 75

_stuck_calls: list[str] = []
"""This process's calls still running past their timeout ("stage 'x' of clip 'y'")."""


def _raise_in_thread(thread: threading.Thread, error: type[BaseException]) -> None:
    """Ask `thread` to raise `error` at its next Python bytecode (a stuck C call stays stuck
    until it returns)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident or 0), ctypes.py_object(error)
    )


def call_with_timeout(fn: Callable[[Any], Any], row: Any, seconds: float, stage: str) -> Any:
    """`fn(row)`, or a StageTimeoutError naming the clip and stage after `seconds` (0 = no
    limit). The call runs in a worker thread that is told to stop when it overruns, so a clip
    that decodes forever or a model call that hangs costs one failure row, not the job; a
    thread that does not stop within `STOP_GRACE_S` is recorded as stuck (`worker_stuck`)."""
    if not seconds:
        return fn(row)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["row"] = fn(row)
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=target, name=f"s4d-{stage}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        _raise_in_thread(worker, StageTimeoutError)
        worker.join(STOP_GRACE_S)
        clip = f"clip {row.get('clip_id')!r}"
        if worker.is_alive():
            _stuck_calls.append(f"stage {stage!r} of {clip}")
            log.error(
                "%s: stage %r is stuck past its %g s timeout (in C code: it cannot be "
                "interrupted); the clip fails and this worker is replaced",
                clip,
                stage,
                seconds,
            )
        raise StageTimeoutError(
            f"{clip}: stage {stage!r} took longer than its {seconds:g} s timeout "
            f"(stages.{stage}.timeout_s)"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["row"]


def worker_stuck() -> bool:
    """Whether a call of this process is still running past its timeout."""
    return bool(_stuck_calls)


def _exit_stuck_worker() -> None:
    """End this Ray worker (Ray replaces it and retries its queued calls)."""
    print(
        f"s4d: this worker exits: {_stuck_calls[0]} is stuck past its timeout",
        file=sys.stderr,
        flush=True,
    )
    logging.shutdown()
    os._exit(STUCK_EXIT_CODE)


def exit_if_stuck() -> None:
    """At the start of a Ray call: exit when an earlier call of this worker is stuck."""
    if _stuck_calls:
        time.sleep(EXIT_PAUSE_S)
        _exit_stuck_worker()


def _exit_when_idle() -> None:
    """After the call that got stuck: exit in `IDLE_EXIT_S` if no next call exits first."""
    timer = threading.Timer(IDLE_EXIT_S, _exit_stuck_worker)
    timer.daemon = True
    timer.start()


def _stuck_folder(run_id: str) -> str:
    """This node's record of the run's clips that left workers stuck."""
    return os.path.join(tempfile.gettempdir(), "s4d-stuck", run_id)


def record_stuck(run_id: str, clip_id: str) -> None:
    """Count one worker left stuck by `clip_id` (an empty file per worker, on this node)."""
    folder = _stuck_folder(run_id)
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"{clip_id}.{os.getpid()}-{time.time_ns()}"), "w").close()


def stuck_count(run_id: str, clip_id: str) -> int:
    """Workers `clip_id` has left stuck in this run on this node (one stat when none has)."""
    folder = _stuck_folder(run_id)
    if not run_id or not os.path.isdir(folder):
        return 0
    return sum(1 for name in os.listdir(folder) if name.rpartition(".")[0] == clip_id)


def apply(
    spec: StageSpec,
    context: Any,
    item: Row | Batch,
    timeout_s: float = 0.0,
    placement: dict[str, Any] | None = None,
) -> Row | Batch:
    """Run `spec` on one clip row (task, actor; at most `timeout_s` seconds) or a numpy batch
    of clips (reducer), each clip's columns checked; `placement` (the Ray worker's,
    `worker_placement`) goes into the metadata of each clip that comes out done."""

    def process(clips: Any) -> Any:
        return spec.process(clips, context)

    if spec.kind == REDUCER:
        rows = batch_to_rows(item)
        before = [failed(row) for row in rows]
        out = run_batch(rows, spec, process)
    else:
        before = [failed(item)]
        timed = partial(call_with_timeout, process, seconds=timeout_s, stage=spec.name)
        out = [run_stage(item, spec, timed)]
    for was_failed, row in zip(before, out, strict=True):
        _record_outcome(row, spec, was_failed, placement)
    return rows_to_batch(out) if spec.kind == REDUCER else out[0]


def serve(
    spec: StageSpec,
    context: Any,
    item: Row | Batch,
    job: Job,
    placement: dict[str, Any],
) -> Row | Batch:
    """One Ray call of `spec`: `apply`, with the worker's exit when a call of it is stuck
    (before this call, or after this one has returned its rows) and the cap on clips that
    have left workers stuck (see the module docstring)."""
    exit_if_stuck()
    timeout_s = job.resources(spec.name).timeout_s
    if spec.kind != REDUCER and not failed(item):
        count = stuck_count(job.run_id, str(item["clip_id"]))
        if count >= STUCK_LIMIT:
            error = StageTimeoutError(
                f"clip {item['clip_id']!r}: stage {spec.name!r} left {count} workers stuck "
                "past its timeout; not run again"
            )
            metrics.record_clip_failed(spec.name)
            return mark_failed(item, spec, error)
    out = apply(spec, context, item, timeout_s, placement)
    if worker_stuck():
        if spec.kind != REDUCER and job.run_id:
            record_stuck(job.run_id, str(item["clip_id"]))
        _exit_when_idle()
    return out


class StageActor:
    """A stage whose state (a model, a jitted optimiser) is set up once per actor. Ray Data
    gets one subclass per stage (`actor_class`), so pools carry the stage's name."""

    def __init__(self, spec: StageSpec, job: Job) -> None:
        self.spec = spec
        self.job = job
        # the GPU is checked before any weights are fetched
        self.placement = worker_placement(spec.name, job)
        self.context = spec.setup(on_cpu(job) if self.placement["cpu_fallback"] else job)

    def __call__(self, item: Row | Batch) -> Row | Batch:
        return serve(self.spec, self.context, item, self.job, self.placement)


@cache
def actor_class(stage_name: str) -> type[StageActor]:
    """The actor class of a stage, named after it (`StereoActor`, `OptimizeActor`, ...); its
    constructor takes the stage's entry and the job."""
    name = actor_name(stage_name)
    return type(name, (StageActor,), {"__qualname__": name})


def task_function(spec: StageSpec, job: Job) -> Callable[[Any], Any]:
    """The Ray task function of a stateless stage, named after it (`decode`, `lift`, ...)."""
    placement: dict[str, Any] = {}  # per worker process: made on its first clip, then reused

    def run(item: Any) -> Any:
        if not placement:
            placement.update(worker_placement(spec.name, job))
        return serve(spec, spec.setup(job), item, job, placement)

    run.__name__ = run.__qualname__ = spec.name
    return run


def run_in_process(
    rows: list[Row],
    config: PipelineConfig,
    output: str,
    stages: Sequence[StageSpec] = STAGES,
) -> list[dict[str, Any]]:
    """Every stage of every clip, one after another in this process, no Ray: the same stage
    list, set-ups, transforms and column checks as the dataset. For debugging a clip, and the
    baseline the streaming benchmark compares against. Returns the write stage's summary
    rows. A call stuck past its timeout fails its clip; its thread is left behind."""
    job = Job(config, output)
    contexts = {spec.name: spec.setup(job) for spec in stages}
    summaries: list[dict[str, Any]] = []
    for row in rows:
        item: Any = row
        batched = False
        for spec in stages:
            if (spec.kind == REDUCER) != batched:  # one clip as a batch of one, or back
                item = batch_to_rows(item)[0] if batched else rows_to_batch([item])
                batched = not batched
            item = apply(spec, contexts[spec.name], item, config.resources(spec.name).timeout_s)
        summaries += batch_to_rows(item) if batched else [item]
    return summaries
