"""Checks the driver makes before any clip is computed: fail in seconds, not after
hours, with the path or the stage named.

- `check_paths`: the output folder must not be, contain or lie inside an input folder
  (`--output` = the dataset root would overwrite the release npz in `OUTPUT/npz`).
- `prepare_output`: create the output layout and prove it writable (a file or a read-only
  folder as `--output` used to be found only when the first clip was written).
- `remove_stale_temp_files`: temp files of writers killed mid-write (run under the lease).
- `check_cluster_resources`: a stage asking for GPUs (or more CPUs than a node has) on a
  cluster that cannot provide them would wait forever for an actor; so would a pipeline whose
  actor pools, at their minimum sizes, leave no room for a task of its task stages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from s4d_ray.io import fs
from s4d_ray.io.overlap import OutputPathError, check_output
from s4d_ray.io.writer import FAILURES_DIR, NPZ_DIR, PARQUET_DIR

if TYPE_CHECKING:
    from s4d_ray.engine.config import PipelineConfig

log = logging.getLogger("s4d_ray.engine.preflight")

OUTPUT_DIRS = (NPZ_DIR, PARQUET_DIR, FAILURES_DIR)


class ClusterResourcesError(ValueError):
    """A stage asks for resources the Ray cluster cannot provide (it would wait forever)."""


def check_paths(output: str, inputs: Mapping[str, str]) -> None:
    """Refuse an `--output` that equals, contains or lies inside an input (`inputs`: flag name
    -> URI; empty URIs are skipped): the shared guard of `s4d_ray.io.overlap`."""
    check_output(output, inputs)


def prepare_output(output: str) -> None:
    """Create OUTPUT/{npz,parquet,failures} (local) and prove each writable with a probe file;
    on object stores the lease object is the probe. Raise OutputPathError naming the path."""
    if not fs.is_local(output):
        return
    _, root = fs.filesystem(output)
    try:
        for sub in ("", *OUTPUT_DIRS):
            folder = os.path.join(root, sub) if sub else root
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise OutputPathError(f"--output {output!r}: {folder} exists and is not a folder")
            os.makedirs(folder, exist_ok=True)
            probe = os.path.join(folder, fs.temp_name("write-probe"))
            with open(probe, "wb") as f:
                f.write(b"s4d")
            os.unlink(probe)
    except OutputPathError:
        raise
    except OSError as error:
        raise OutputPathError(f"--output {output!r} is not writable: {error}") from error


def remove_stale_temp_files(output: str) -> int:
    """Delete temp files left by writers killed mid-write under the output; the count."""
    removed = []
    for folder in (output, *(fs.join(output, sub) for sub in OUTPUT_DIRS)):
        removed += fs.remove_stale_temp_files(folder)
    if removed:
        log.warning("removed %d temp files of killed writers: %s", len(removed), removed[:5])
    return len(removed)


def _most_per_node(nodes: list[dict], key: str) -> float:
    return max(
        (float(n.get("Resources", {}).get(key, 0.0)) for n in nodes if n.get("Alive")), default=0.0
    )


def check_cluster_resources(config: PipelineConfig, pool_stages: frozenset[str]) -> None:
    """Every stage's per-actor/per-task CPUs and GPUs must fit on some node of the connected
    cluster, or on a node type the cluster's autoscaler may add; and, on a cluster without an
    autoscaler, all actor pools (`pool_stages`) at their minimum sizes plus one task of the
    hungriest task stage must fit in the cluster's total at once (Ray Data starts every pool
    before it streams, so otherwise the job waits forever). Raise ClusterResourcesError
    naming the stages, what they ask for and what the cluster has."""
    import ray

    nodes = ray.nodes()
    total = ray.cluster_resources()
    try:  # what an autoscaler could add (None without one); a private Ray API
        from ray._private.state import state

        scalable = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - older/newer Ray: fall back to the live nodes
        scalable = {}
    for name, res in config.stages.items():
        for key, wanted in (("GPU", res.num_gpus), ("CPU", res.num_cpus)):
            if not wanted:
                continue
            if float(scalable.get(key, 0) or 0) >= wanted:
                continue
            if _most_per_node(nodes, key) >= wanted:
                continue
            has = _most_per_node(nodes, key)
            raise ClusterResourcesError(
                f"config key 'stages.{name}.num_{key.lower()}s' = {wanted}: no node of the "
                f"Ray cluster has {wanted} {key} (largest node: {has:g}; cluster total "
                f"{float(total.get(key, 0)):g} {key}, no autoscaler node type with more); the "
                "stage's actors would wait forever. Lower it in --config, or use a cluster "
                f"with {key}s" + (" (or --backend cpu)" if key == "GPU" else "")
            )
    if not scalable:
        _check_pipeline_fits(config, pool_stages, total)


def _check_pipeline_fits(
    config: PipelineConfig, pool_stages: frozenset[str], total: Mapping[str, float]
) -> None:
    for key, field in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        pools = {
            name: res.min_actors * getattr(res, field)
            for name, res in config.stages.items()
            if name in pool_stages and getattr(res, field)
        }
        tasks = {
            name: getattr(res, field)
            for name, res in config.stages.items()
            if name not in pool_stages and getattr(res, field)
        }
        largest_task = max(tasks, key=tasks.get, default=None)
        needed = sum(pools.values()) + (tasks[largest_task] if largest_task else 0.0)
        has = float(total.get(key, 0))
        if needed <= has + 1e-9:
            continue
        parts = [f"{name} {amount:g}" for name, amount in pools.items()]
        if largest_task:
            parts.append(f"one {largest_task} task {tasks[largest_task]:g}")
        raise ClusterResourcesError(
            f"the pipeline needs {needed:g} {key} at once (actor pools at min_actors, then a "
            f"task: {', '.join(parts)}) but the Ray cluster has {has:g} {key} and no "
            "autoscaler; it would wait forever. Lower stages.<stage>.num_"
            f"{key.lower()}s or min_actors in --config, or give the cluster more {key}s "
            "(a local head: `ray start --head --num-cpus 4`, as cluster/local_head.sh does)"
        )
