"""Checks the driver makes before any clip is computed: fail in seconds, not after
hours, with the path or the stage named.

- `check_paths`: the output folder must not be, contain or lie inside an input folder
  (`--output` = the dataset root would overwrite the release npz in `OUTPUT/npz`).
- `prepare_output`: create the output layout and prove it writable (a file or a read-only
  folder as `--output` used to be found only when the first clip was written).
- `remove_stale_temp_files`: temp files of writers killed mid-write (run under the lease).
- `check_cluster_resources`: a stage asking for GPUs (or more CPUs, or a custom resource, than
  one node has) on a cluster that cannot provide them, now or by autoscaling, would wait
  forever for an actor; so would a pipeline whose actor pools, at their minimum sizes, leave
  no room for a task of its task stages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from s4d_ray.errors import InputError
from s4d_ray.io import fs
from s4d_ray.io.overlap import OutputPathError, check_output
from s4d_ray.io.writer import FAILURES_DIR, NPZ_DIR, PARQUET_DIR

if TYPE_CHECKING:
    from s4d_ray.engine.config import PipelineConfig, StageResources

log = logging.getLogger("s4d_ray.engine.preflight")

OUTPUT_DIRS = (NPZ_DIR, PARQUET_DIR, FAILURES_DIR)


class ClusterResourcesError(InputError):
    """A stage asks for resources the Ray cluster cannot provide (it would wait forever):
    refused before the run, exit 2."""


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


AUTOSCALER_CONFIG_ENV = "S4D_AUTOSCALER_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
"""Where `ray up` leaves the autoscaler's config on the head node, where `ray job submit`
runs the driver."""

_FIELDS = {"CPU": "num_cpus", "GPU": "num_gpus"}


def stage_request(resources: StageResources) -> dict[str, float]:
    """What one actor or task of a stage asks Ray for on a single node: CPU, GPU and its
    custom resources (zero amounts left out)."""
    wanted = {"CPU": resources.num_cpus, "GPU": resources.num_gpus, **resources.custom_resources}
    return {key: float(amount) for key, amount in wanted.items() if amount}


def fits(request: Mapping[str, float], node: Mapping[str, float]) -> bool:
    """Whether one node with `node` resources can hold all of `request` at once."""
    return all(float(node.get(key, 0.0)) + 1e-9 >= amount for key, amount in request.items())


def node_types_from_config(config: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per-node resources of each node type an autoscaler config (the YAML of `ray up`,
    `cluster/gcp_autoscaler.yaml`) may start (`max_workers` > 0, or the head type). A type
    without declared `resources` (the provider fills them from the machine type) is left out:
    what it holds cannot be known here."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    return {
        name: {key: float(amount) for key, amount in spec["resources"].items()}
        for name, spec in types.items()
        if isinstance(spec, Mapping)
        and isinstance(spec.get("resources"), Mapping)
        and (name == head or int(spec.get("max_workers", 0) or 0) > 0)
    }


def autoscaler_node_types() -> tuple[dict[str, dict[str, float]], str]:
    """The node types the connected cluster's autoscaler may add, and where they were read:

    1. the cluster config the autoscaler publishes in the GCS (autoscaler v2, KubeRay); Ray
       2.60's default autoscaler (v1, as `ray up` and the fake multi-node provider start it)
       publishes none, so
    2. its config file: `$S4D_AUTOSCALER_CONFIG`, else `~/ray_bootstrap_config.yaml` on the
       head (`ray up` writes it there; a `ray job submit` driver runs there).

    ({}, "") when the cluster has no autoscaler that can be found."""
    published = _published_node_types()
    if published:
        return published, "the autoscaler's cluster config in the GCS"
    path = os.environ.get(AUTOSCALER_CONFIG_ENV) or os.path.expanduser(BOOTSTRAP_CONFIG)
    if not os.path.isfile(path):
        if os.environ.get(AUTOSCALER_CONFIG_ENV):
            raise ClusterResourcesError(f"{AUTOSCALER_CONFIG_ENV}={path!r} is not a file")
        return {}, ""
    import yaml

    with open(path) as f:
        return node_types_from_config(yaml.safe_load(f) or {}), path


def _published_node_types() -> dict[str, dict[str, float]]:
    try:  # a private Ray API: any change in it means "not published"
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001
        return {}
    if config is None:
        return {}
    return {
        group.name: {key: float(amount) for key, amount in group.resources.items()}
        for group in config.node_group_configs
        if group.max_count != 0
    }


def check_cluster_resources(config: PipelineConfig, pool_stages: frozenset[str]) -> None:
    """Every stage's per-actor/per-task request (CPUs, GPUs and custom resources together)
    must fit on one live node of the connected cluster or on one node type its autoscaler may
    add (`autoscaler_node_types`); and, on a cluster without an autoscaler, all actor pools
    (`pool_stages`) at their minimum sizes plus one task of the hungriest task stage must fit
    in the cluster's total at once (Ray Data starts every pool before it streams, so otherwise
    the job waits forever). Raise ClusterResourcesError naming the stage, what it asks for and
    what the cluster has and may add."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    node_types, source = autoscaler_node_types()
    candidates = nodes + list(node_types.values())
    for name, res in config.stages.items():
        request = stage_request(res)
        if any(fits(request, node) for node in candidates):
            continue
        short = [key for key in request if not fits({key: request[key]}, _largest(candidates))]
        key = short[0] if short else ""
        where = f"stages.{name}.{_FIELDS.get(key, 'custom_resources.' + key)}" if key else ""
        asked = ", ".join(f"{amount:g} {k}" for k, amount in request.items())
        types = (
            "; autoscaler node types ("
            + source
            + "): "
            + "; ".join(f"{t} {_describe(r)}" for t, r in node_types.items())
            if node_types
            else "; no autoscaler node type with more"
        )
        raise ClusterResourcesError(
            (f"config key {where!r} = {request[key]:g}: " if key else f"stages.{name}: ")
            + f"one {name} actor/task asks for {asked} on one node, and no node of the Ray "
            f"cluster has that (largest node: {_describe(_largest(nodes))}{types}); it would "
            "wait forever. Lower it in --config, or use a cluster whose nodes hold it"
            + (" (or --backend cpu)" if key == "GPU" else "")
        )
    if not node_types:
        _check_pipeline_fits(config, pool_stages, ray.cluster_resources())


def _largest(nodes: list[Mapping[str, float]]) -> dict[str, float]:
    """Per resource, the most any one of `nodes` has (for messages: not one real node)."""
    keys = {key for node in nodes for key in node}
    return {key: max(float(node.get(key, 0.0)) for node in nodes) for key in keys}


def _describe(resources: Mapping[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if not k.startswith(("node:", "memory", "object"))}
    shown.setdefault("GPU", 0.0)
    shown.setdefault("CPU", 0.0)
    return ", ".join(f"{amount:g} {key}" for key, amount in sorted(shown.items()))


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
        largest_task = max(tasks, key=tasks.__getitem__, default=None)
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
