"""Engine configuration: backend, per-stage resources and pool sizes, model options, limits.

Defaults run anywhere (`cpu` backend, no GPU requested). `neural` defaults pin each model to a
GPU share sized to the stage's part of the work (not yet measured on a GPU). A YAML or JSON file
(`--config FILE`) may override any field, e.g.

    backend: neural
    stages:
      tracking: {num_gpus: 1.0, max_actors: 8}
    models:
      precision: bf16
      tracking: {weights_uri: gs://my-bucket/bootstapir_checkpoint_v2.pt}
    optimizer: {clips_per_batch: 8}

Every value is checked on the driver before Ray starts (`ConfigError` names the key path, e.g.
`stages.tracking.num_gpu`): unknown keys at any depth, types, precision strings, fractions in
[0, 1], positive sizes, and that every section is a mapping. Per-model options are checked by
the stage backend's registered options (`s4d_ray.stages.base.validate_options`): the backend
says what it accepts.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s4d_ray.errors import InputError
from s4d_ray.io import fs
from s4d_ray.models.device import PRECISIONS
from s4d_ray.stages.base import (
    ENGINE_OPTIONS,
    MODEL_STAGES,
    OptionError,
    type_name,
    type_problem,
    validate_options,
)


@dataclass(frozen=True)
class StageResources:
    """Ray resources of one stage, per actor (actor pools) or per task (tasks), and how long
    one clip may take in it."""

    num_cpus: float = 0.5
    num_gpus: float = 0.0
    min_actors: int = 1
    max_actors: int = 1
    timeout_s: float = 1800.0
    """Seconds one clip may spend in a per-clip stage (task or actor) before it becomes a
    failure row (`StageTimeoutError`) and the job goes on; 0 = no limit. Reducers, which
    take a batch of clips per call, are not timed out."""
    custom_resources: dict[str, float] = field(default_factory=dict)
    """Ray custom resources per actor/task, e.g. {"s4d_gpu_node": 0.25} to place a model pool
    on the nodes started with `ray start --resources '{"s4d_gpu_node": 1}'`."""


DEFAULT_RESOURCES: dict[str, dict[str, StageResources]] = {
    "decode": {"cpu": StageResources(num_cpus=1.0), "neural": StageResources(num_cpus=2.0)},
    "stereo": {
        "cpu": StageResources(num_cpus=0.5),
        "neural": StageResources(num_cpus=1.0, num_gpus=0.25, max_actors=4),
    },
    "segmentation": {
        "cpu": StageResources(num_cpus=0.1),
        "neural": StageResources(num_cpus=1.0, num_gpus=0.125, max_actors=2),
    },
    "tracking": {
        "cpu": StageResources(num_cpus=0.5),
        "neural": StageResources(num_cpus=1.0, num_gpus=0.5, max_actors=8),
    },
    "lift": {"cpu": StageResources(num_cpus=0.5), "neural": StageResources(num_cpus=1.0)},
    "optimize": {
        "cpu": StageResources(num_cpus=0.5),
        "neural": StageResources(num_cpus=2.0, max_actors=2),
    },
    "write": {"cpu": StageResources(num_cpus=0.25), "neural": StageResources(num_cpus=0.5)},
}
"""Each stage's default resources per backend, in the stage list's order (`stage_list.STAGES`).
CPU shares are fractional so that actor pools never starve the decode tasks on small
machines; on `neural`, models get fractional GPUs sized to their share of the work (BootsTAP
dominates)."""


def default_resources(backend: str) -> dict[str, StageResources]:
    """Each stage's default resources on `backend`, in stage order (a fresh dict)."""
    return {name: by_backend[backend] for name, by_backend in DEFAULT_RESOURCES.items()}


BACKENDS = ("cpu", "neural")
"""The engine's backends; every model stage registers one backend under each name
(`s4d_ray.stages.base.register_backend`)."""

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ConfigError(InputError):
    """A configuration the engine cannot run; `key` is the dotted path of the bad entry."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key {key!r}: {message}" if key else f"config: {message}")


@dataclass
class ModelSettings:
    """How the model stages run: device ('auto' = the GPU Ray gave the actor, else CPU),
    precision (`PRECISIONS`), and per-stage options of the stage's backend on the configured
    backend, the fields of its registered options dataclass (e.g. `SEARAFTOptions`,
    `TapirOptions`, `DeepLabOptions`): `weights_uri` (any fsspec URI; default the official
    checkpoint), `batch_size`, `query_stride`, `query_chunk_size`, and for SEA-RAFT a `config`
    dict of official config keys. Device and precision go to every backend that takes them.

    A model actor that Ray gave a GPU checks CUDA before it loads weights; when CUDA does not
    work the job stops (`GpuUnavailableError`) unless `allow_cpu_fallback` (a rehearsal on
    fake GPUs), which runs it on the CPU and says so in each clip's `placement` record."""

    device: str = "auto"
    precision: str = "fp32"
    allow_cpu_fallback: bool = False
    stereo: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)
    segmentation: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizeStageSettings:
    """The optimize stage (a reducer): how many clips share one batched, jitted optimiser call,
    and the Adam steps per track (None: the optimiser's default,
    `s4d_ray.track.optimize.OptimizerSettings.num_steps`)."""

    clips_per_batch: int = 4
    num_steps: int | None = None


@dataclass
class PipelineConfig:
    """Everything a run of `jobs/process_clips.py` / `s4d run` can be told. Checked on
    construction (`ConfigError`)."""

    backend: str = "cpu"
    stages: dict[str, StageResources] = field(default_factory=dict)
    models: ModelSettings = field(default_factory=ModelSettings)
    optimizer: OptimizeStageSettings = field(default_factory=OptimizeStageSettings)
    clips_per_shard: int = 8
    min_tracks: int = 16
    """Clips keeping fewer valid tracks fail; 0 writes every clip (wiring tests)."""
    max_failure_fraction: float = 1.0
    """Abort when more than this fraction of at least `failure_check_after` clips failed."""
    failure_check_after: int = 8
    dense: bool = False
    """Also write per clip the rectified frames, the stereo depth and the intrinsics
    (`s4d_ray.io.dense`); without it those arrays die as soon as consumed."""
    max_npz_bytes: int = 1 << 30
    """Cap on one input npz: its file size and the uncompressed bytes of the release members
    read (checked from the zip and array headers before decompressing)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError("backend", f"must be one of {BACKENDS}, got {self.backend!r}")
        defaults = default_resources(self.backend)
        for name in self.stages:
            if name not in defaults:
                raise ConfigError(
                    f"stages.{name}", f"unknown stage {name!r}; stages are {sorted(defaults)}"
                )
        defaults.update(self.stages)
        self.stages = defaults
        check_config(self)

    def resources(self, stage: str) -> StageResources:
        return self.stages[stage]


# --- checks -----------------------------------------------------------------------------------


def _check_type(key: str, value: Any, annotation: object) -> None:
    """`value` against a simple annotation ('int', 'float | None', ...; `type_problem`)."""
    problem = type_problem(value, annotation)
    if problem:
        raise ConfigError(key, problem)


def _check_fields(obj: Any, prefix: str) -> None:
    """Types of a dataclass's scalar fields (int, float, str) by their annotations."""
    for f in dataclasses.fields(obj):
        _check_type(f"{prefix}{f.name}", getattr(obj, f.name), f.type)


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(key, f"must be >= {low}, got {value!r}")


def _check_model_options(stage: str, options: Any, backend: str) -> None:
    """`models.<stage>` against the options the stage's `backend` registered."""
    where = f"models.{stage}"
    if not isinstance(options, dict):
        raise ConfigError(where, f"must be a mapping of options, got {type_name(options)}")
    for name in options:
        if name in ENGINE_OPTIONS:
            raise ConfigError(
                f"{where}.{name}", f"set models.{name} instead (one value for every model)"
            )
    try:
        validate_options(stage, backend, options)
    except OptionError as error:
        raise ConfigError(f"{where}.{error.option}", error.message) from error


def check_config(config: PipelineConfig) -> None:
    """Every value of `config` (types, ranges, model options); raises ConfigError."""
    _check_fields(config, "")
    _at_least("clips_per_shard", config.clips_per_shard, 1)
    _at_least("min_tracks", config.min_tracks, 0)
    _at_least("failure_check_after", config.failure_check_after, 1)
    _at_least("max_npz_bytes", config.max_npz_bytes, 1)
    if not 0.0 <= config.max_failure_fraction <= 1.0:
        raise ConfigError(
            "max_failure_fraction", f"must be in [0, 1], got {config.max_failure_fraction!r}"
        )
    for name, res in config.stages.items():
        prefix = f"stages.{name}."
        if not isinstance(res, StageResources):
            raise ConfigError(f"stages.{name}", f"must be a mapping, got {type_name(res)}")
        _check_fields(res, prefix)
        _at_least(prefix + "num_cpus", res.num_cpus, 0)
        _at_least(prefix + "num_gpus", res.num_gpus, 0)
        _at_least(prefix + "min_actors", res.min_actors, 1)
        _at_least(prefix + "max_actors", res.max_actors, res.min_actors)
        _at_least(prefix + "timeout_s", res.timeout_s, 0)
        if not isinstance(res.custom_resources, dict):
            raise ConfigError(
                prefix + "custom_resources",
                f"must be a mapping of resource names to amounts, got {type_name(res.custom_resources)}",
            )
        for resource, amount in res.custom_resources.items():
            _check_type(f"{prefix}custom_resources.{resource}", amount, "float")
            _at_least(f"{prefix}custom_resources.{resource}", amount, 0)
    if not isinstance(config.models, ModelSettings):
        raise ConfigError("models", f"must be a mapping, got {type_name(config.models)}")
    _check_fields(config.models, "models.")
    if config.models.precision not in PRECISIONS:
        raise ConfigError(
            "models.precision", f"must be one of {PRECISIONS}, got {config.models.precision!r}"
        )
    if not _DEVICE.match(config.models.device):
        raise ConfigError(
            "models.device", f"must be auto, cpu, mps, cuda or cuda:N, got {config.models.device!r}"
        )
    for stage in MODEL_STAGES:
        _check_model_options(stage, getattr(config.models, stage), config.backend)
    if not isinstance(config.optimizer, OptimizeStageSettings):
        raise ConfigError("optimizer", f"must be a mapping, got {type_name(config.optimizer)}")
    _check_fields(config.optimizer, "optimizer.")
    _at_least("optimizer.clips_per_batch", config.optimizer.clips_per_batch, 1)
    if config.optimizer.num_steps is not None:
        _at_least("optimizer.num_steps", config.optimizer.num_steps, 1)


# --- building from plain data -----------------------------------------------------------------


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """`value` as a dict (None = empty); anything else that is not a mapping is an error."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"must be a mapping, got {type_name(value)} {value!r:.80}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(where, f"keys must be strings, got {type_name(key)} {key!r}")
    return dict(value)


def _known(cls: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown key; known here: {known}")
    return values


def config_from_dict(values: Any) -> PipelineConfig:
    """A checked PipelineConfig from plain data (a parsed YAML/JSON file); ConfigError names
    the first bad key."""
    values = _known(PipelineConfig, _mapping(values, ""), "")
    backend = values.get("backend", "cpu")
    if backend not in BACKENDS:
        raise ConfigError("backend", f"must be one of {BACKENDS}, got {backend!r}")
    stages = default_resources(backend)
    for name, overrides in _mapping(values.pop("stages", None), "stages").items():
        if name not in stages:
            raise ConfigError(
                f"stages.{name}", f"unknown stage {name!r}; stages are {sorted(stages)}"
            )
        overrides = _known(StageResources, _mapping(overrides, f"stages.{name}"), f"stages.{name}.")
        stages[name] = dataclasses.replace(stages[name], **overrides)
    values["stages"] = stages
    if "models" in values:
        models = _known(ModelSettings, _mapping(values["models"], "models"), "models.")
        for stage in MODEL_STAGES:
            if stage in models:
                models[stage] = _mapping(models[stage], f"models.{stage}")
        values["models"] = ModelSettings(**models)
    if "optimizer" in values:
        optimizer = _known(
            OptimizeStageSettings, _mapping(values["optimizer"], "optimizer"), "optimizer."
        )
        values["optimizer"] = OptimizeStageSettings(**optimizer)
    return PipelineConfig(**values)


MAX_CONFIG_BYTES = 1 << 20
"""A config file is small; a larger one is refused before it is parsed."""


def _load_yaml(text: str) -> Any:
    """`yaml.safe_load` that refuses aliases (`*name`): a few hundred bytes of nested aliases
    (a "billion laughs" alias bomb) expand to gigabytes; a config never needs them."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "YAML aliases (*name) are not allowed in a config", event.start_mark
                )
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(uri: str | None, **overrides: Any) -> PipelineConfig:
    """Read a YAML/JSON config from any fsspec URI (None: defaults), apply overrides (None
    values are ignored) and check it. ConfigError for a bad file or value."""
    values: Any = {}
    if uri:
        try:
            text = fs.read_bytes(uri, max_bytes=MAX_CONFIG_BYTES).decode()
        except (fs.InputTooLargeError, fs.NotRegularFileError) as error:
            raise ConfigError("", str(error)) from error
        try:
            values = json.loads(text) if uri.endswith(".json") else _load_yaml(text)
        except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
            raise ConfigError("", f"{uri!r} is not valid JSON/YAML: {error}") from error
        except Exception as error:  # yaml.YAMLError
            if type(error).__module__.startswith("yaml"):
                raise ConfigError("", f"{uri!r} is not valid YAML: {error}") from error
            raise
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError("", f"{uri!r} must hold a mapping, got {type_name(values)}")
        values = dict(values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values)


def config_to_dict(config: PipelineConfig) -> dict[str, Any]:
    """Plain data of a config (for summary.json and logs)."""
    return dataclasses.asdict(config)
