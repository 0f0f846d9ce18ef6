"""Running one entry of the stage list on clips: set up once, then per clip (or batch), with
failure capture and metrics. The same objects serve Ray Data (callable classes in actor pools,
functions for tasks) and the in-process runner."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import re
import threading
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from s4d_ray.engine import metrics
from s4d_ray.engine.clip_stages import (
    Row,
    batch_to_rows,
    failed,
    record_placement,
    rows_to_batch,
    run_stage,
)
from s4d_ray.engine.stage_list import REDUCER, STAGE, Job, StageSpec
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
        num_gpus=job.config.resources(stage).num_gpus,
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


def record_stage_outcome(row: Row, spec: StageSpec, was_failed: bool) -> None:
    """Metrics of one clip after `spec`: its seconds, or a failure if it failed right there."""
    if was_failed:
        return
    if failed(row):
        metrics.record_clip_failed(spec.name)
    else:
        metrics.record_stage_from_row(row, spec.name)


class StageTimeoutError(TimeoutError):
    """A clip spent longer in a stage than the stage's `timeout_s`."""


def _raise_in_thread(thread: threading.Thread, error: type[BaseException]) -> None:
    """Ask `thread` to raise `error` at its next Python bytecode (a stuck C call stays stuck
    until it returns)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident or 0), ctypes.py_object(error)
    )


def call_with_timeout(fn: Callable[[Row], Row], row: Row, seconds: float, stage: str) -> Row:
    """`fn(row)`, or a StageTimeoutError naming the clip and stage after `seconds` (0 = no
    limit). The call runs in a worker thread that is told to stop when it overruns, so a clip
    that decodes forever or a model call that hangs costs one failure row, not the job."""
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
        worker.join(5.0)
        raise StageTimeoutError(
            f"clip {row.get('clip_id')!r}: stage {stage!r} took longer than its "
            f"{seconds:g} s timeout (stages.{stage}.timeout_s)"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["row"]


def apply(
    spec: StageSpec,
    context: Any,
    item: Row | Batch,
    timeout_s: float = 0.0,
    placement: dict[str, Any] | None = None,
) -> Row | Batch:
    """Run `spec` on one clip row (task, actor; at most `timeout_s` seconds) or a numpy batch
    of clips (reducer); `placement` (the Ray worker's, `worker_placement`) goes into the
    metadata of each clip that comes out done."""
    if spec.kind == REDUCER:
        rows = batch_to_rows(item)
        before = [failed(row) for row in rows]
        rows = spec.process(rows, context)
        for was_failed, row in zip(before, rows, strict=True):
            record_stage_outcome(row, spec, was_failed)
            if placement is not None and not failed(row):
                record_placement(row, spec.name, placement)
        return rows_to_batch(rows)
    was_failed = failed(item)
    row = run_stage(
        item,
        spec,
        lambda r: call_with_timeout(lambda x: spec.process(x, context), r, timeout_s, spec.name),
    )
    record_stage_outcome(row, spec, was_failed)
    if placement is not None and not failed(row):
        record_placement(row, spec.name, placement)
    return row


class StageActor:
    """A stage whose state (a model, a jitted optimiser) is set up once per actor. Ray Data
    gets one subclass per stage (`actor_class`), so pools carry the stage's name."""

    stage_name = ""

    def __init__(self, job: Job) -> None:
        self.spec = STAGE[self.stage_name]
        # the GPU is checked before any weights are fetched
        self.placement = worker_placement(self.stage_name, job)
        self.context = self.spec.setup(on_cpu(job) if self.placement["cpu_fallback"] else job)
        self.timeout_s = job.config.resources(self.stage_name).timeout_s

    def __call__(self, item: Row | Batch) -> Row | Batch:
        return apply(self.spec, self.context, item, self.timeout_s, self.placement)


@cache
def actor_class(stage_name: str) -> type[StageActor]:
    """The actor class of a stage, named after it (`StereoActor`, `OptimizeActor`, ...)."""
    name = STAGE[stage_name].actor_name
    return type(name, (StageActor,), {"stage_name": stage_name, "__qualname__": name})


def task_function(stage_name: str, job: Job) -> Callable[[Any], Any]:
    """The Ray task function of a stateless stage, named after it (`decode`, `lift`, ...)."""
    spec = STAGE[stage_name]
    timeout_s = job.config.resources(stage_name).timeout_s

    placement: dict[str, Any] = {}  # per worker process: made on its first clip, then reused

    def run(item: Any) -> Any:
        if not placement:
            placement.update(worker_placement(stage_name, job))
        return apply(spec, spec.setup(job), item, timeout_s, placement)

    run.__name__ = run.__qualname__ = stage_name
    return run
