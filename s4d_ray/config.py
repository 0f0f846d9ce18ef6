"""Engine configuration: backend, per-stage resources and pool sizes, model weights, limits.

Defaults run anywhere (`cpu` backend, no GPU requested). `neural` defaults pin each model to a
GPU share that fits one 80 GB GPU per worker node. A YAML or JSON file (`--config FILE`) may
override any field, e.g.

    backend: neural
    stages:
      tracking: {num_gpus: 1.0, max_actors: 8}
    models:
      precision: bf16
      tracking: {weights_uri: gs://my-bucket/bootstapir_checkpoint_v2.pt}
    optimizer: {clips_per_batch: 8}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from s4d_ray import fs

BACKENDS = ("cpu", "neural")


@dataclass
class StageResources:
    """Ray resources of one stage: per actor (model stages) or per task (CPU stages)."""

    num_cpus: float = 0.5
    num_gpus: float = 0.0
    min_actors: int = 1
    max_actors: int = 1


@dataclass
class ModelSettings:
    """How the model stages run: device ('auto' = the GPU Ray gave the actor, else CPU),
    precision ('fp32', 'bf16', 'fp16'), and per-stage options passed to the stage's
    constructor (`StereoMatcher`, `Tracker`, `Segmenter`), e.g. `weights_uri` (any fsspec
    URI; default the official checkpoint), `batch_size`, `query_stride`, `query_chunk_size`,
    and for SEA-RAFT a `config` dict of official config keys."""

    device: str = "auto"
    precision: str = "fp32"
    stereo: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)
    segmentation: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerSettings:
    """The reducer: how many clips share one batched, jitted optimiser call."""

    clips_per_batch: int = 4
    num_steps: int = 100


@dataclass
class PipelineConfig:
    """Everything a run of `jobs/process_clips.py` / `s4d run` can be told."""

    backend: str = "cpu"
    stages: dict[str, StageResources] = field(default_factory=dict)
    models: ModelSettings = field(default_factory=ModelSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    clips_per_shard: int = 8
    min_tracks: int = 16
    max_failure_fraction: float = 1.0
    """Abort when more than this fraction of at least `failure_check_after` clips failed."""
    failure_check_after: int = 8

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        defaults = default_stage_resources(self.backend)
        defaults.update(self.stages)
        self.stages = defaults

    def resources(self, stage: str) -> StageResources:
        return self.stages[stage]


def default_stage_resources(backend: str) -> dict[str, StageResources]:
    """Per-stage resources. CPU shares are fractional so that actor pools never starve the
    decode tasks on small machines; on `neural`, models get fractional GPUs sized to their
    share of the work (BootsTAP dominates)."""
    if backend == "cpu":
        return {
            "decode": StageResources(num_cpus=1.0),
            "stereo": StageResources(num_cpus=0.5),
            "tracking": StageResources(num_cpus=0.5),
            "segmentation": StageResources(num_cpus=0.1),
            "lift": StageResources(num_cpus=0.5),
            "optimize": StageResources(num_cpus=0.5),
            "write": StageResources(num_cpus=0.25),
        }
    return {
        "decode": StageResources(num_cpus=2.0),
        "stereo": StageResources(num_cpus=1.0, num_gpus=0.25, max_actors=4),
        "tracking": StageResources(num_cpus=1.0, num_gpus=0.5, max_actors=8),
        "segmentation": StageResources(num_cpus=1.0, num_gpus=0.125, max_actors=2),
        "lift": StageResources(num_cpus=1.0),
        "optimize": StageResources(num_cpus=2.0, max_actors=2),
        "write": StageResources(num_cpus=0.5),
    }


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown config keys in {where}: {sorted(unknown)}")
    return cls(**values)


def config_from_dict(values: dict[str, Any]) -> PipelineConfig:
    """A PipelineConfig from plain data (a parsed YAML/JSON file); unknown keys are errors."""
    values = dict(values)
    backend = values.get("backend", "cpu")
    stages = default_stage_resources(backend if backend in BACKENDS else "cpu")
    for name, overrides in (values.pop("stages", None) or {}).items():
        if name not in stages:
            raise ValueError(f"unknown stage {name!r} in config; stages are {sorted(stages)}")
        stages[name] = dataclasses.replace(stages[name], **overrides)
    values["stages"] = stages
    if "models" in values:
        values["models"] = _build(ModelSettings, values["models"], "models")
    if "optimizer" in values:
        values["optimizer"] = _build(OptimizerSettings, values["optimizer"], "optimizer")
    return _build(PipelineConfig, values, "the top level")


def load_config(uri: str | None, **overrides: Any) -> PipelineConfig:
    """Read a YAML/JSON config from any fsspec URI (None: defaults), then apply overrides."""
    values: dict[str, Any] = {}
    if uri:
        text = fs.read_bytes(uri).decode()
        if uri.endswith(".json"):
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ValueError(f"config {uri!r} must hold a mapping, got {type(values).__name__}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values)


def config_to_dict(config: PipelineConfig) -> dict[str, Any]:
    """Plain data of a config (for summary.json and logs)."""
    return dataclasses.asdict(config)
