"""One contract for the model stages (stereo, tracking, segmentation) and their backends.

A backend turns a clip's numpy frames into its stage's output: a callable with a
`provenance()`, built from a frozen dataclass of options. Each stage module registers its
backends under the engine's backend names (`cpu`, `neural`):

    @dataclass(frozen=True)
    class MyOptions:
        weights_uri: str | None = None   # None: the model's official checkpoint
        batch_size: int = positive(8)
        device: str = "cpu"              # device and precision: filled in by the engine
        precision: str = "fp32"

    @register_backend("stereo", "neural", MyOptions)
    class MyStereo:
        def __init__(self, options: MyOptions) -> None: ...
        def __call__(self, left: np.ndarray, right: np.ndarray) -> tuple[...]: ...
        def provenance(self) -> dict[str, Any]: ...

The options dataclass is the backend's whole schema: the engine's config accepts exactly its
fields in `models.<stage>` (`validate_options`: types from the annotations — int, float, str,
bool, None and unions of them —, lower bounds from `at_least` / `positive`, anything else from
the dataclass's own `__post_init__`, which raises `OptionError`), and the engine's set-up builds
the stage's callable from them (`build_stage`). Adding or swapping a backend therefore touches
the model's module and its stage module only.

The stage callables (`StereoMatcher`, `Tracker`, `Segmenter`) derive from `ModelStage`: built as
`Stage(backend_name, **options)`, they hold the backend object, check the input frames
(`check_frames`, `check_pair`) and cache the provenance that every clip's metadata records.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from s4d_ray.errors import InputError

if TYPE_CHECKING:
    import numpy as np

MODEL_STAGES = ("stereo", "tracking", "segmentation")
"""The model stages; stage `x` registers its backends in module `s4d_ray.stages.x`."""

ENGINE_OPTIONS = ("device", "precision")
"""Options the engine fills in from its `models.device` / `models.precision` for every backend
whose options have them (one value for all models)."""


class Backend(Protocol):
    """What a stage calls: on numpy frames (arguments and result depend on the stage), and
    `provenance()`: model name, library, config, weights and precision for the metadata."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def provenance(self) -> dict[str, Any]: ...


class OptionError(InputError):
    """A backend option that cannot be used; `option` names it, `message` says why."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        self.message = message
        super().__init__(f"{option}: {message}")


def at_least(minimum: float, default: Any) -> Any:
    """An options-dataclass field with `default` that must be >= `minimum` when not None."""
    return dataclasses.field(default=default, metadata={"minimum": minimum})


def positive(default: Any) -> Any:
    """An options-dataclass field with `default` that must be >= 1 when not None (a size)."""
    return at_least(1, default)


def type_name(value: Any) -> str:
    """`value`'s type as a config file spells it (`null` for None)."""
    return "null" if value is None else type(value).__name__


_SIMPLE_TYPES = {"int", "float", "str", "bool", "None"}


def type_problem(value: Any, annotation: object) -> str | None:
    """Why `value` does not fit a simple annotation ('int', 'float | None', ...), or None when
    it does; annotations naming other types are not checked here."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    kinds = {part.strip() for part in text.split("|")}
    if not kinds <= _SIMPLE_TYPES:
        return None
    ok = (
        (value is None and "None" in kinds)
        or (isinstance(value, bool) and "bool" in kinds)
        or (
            not isinstance(value, bool)
            and (
                (isinstance(value, int) and bool(kinds & {"int", "float"}))
                or (isinstance(value, float) and "float" in kinds)
                or (isinstance(value, str) and "str" in kinds)
            )
        )
    )
    if not ok:
        names = {"None": "null", "float": "a number", "int": "an integer", "str": "a string"}
        wanted = " or ".join(sorted(names.get(k, k) for k in kinds))
        return f"must be {wanted}, got {type_name(value)} {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be finite, got {value!r}"
    return None


# --- the registry -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """One registered backend: its stage, name, options dataclass and how it is built."""

    stage: str
    name: str
    options: type
    """Frozen dataclass of every option the backend takes, with its defaults."""
    build: Callable[[Any], Backend]
    """An `options` instance -> the backend (loads weights: once per actor)."""
    tiny: Callable[[Path], dict[str, Any]] | None = None
    """Writes random weights of a tiny model (fast on CPU, same code paths) under a folder and
    returns the options that run it (tests, CPU benchmarks); None: the backend needs no files."""


REGISTRY: dict[str, dict[str, BackendSpec]] = {}
"""stage -> backend name -> spec, filled by the stage modules as they are imported."""

_STAGE_CLASSES: dict[str, type[ModelStage]] = {}

Build = TypeVar("Build", bound=Callable[..., Any])


def register_backend(
    stage: str, name: str, options: type, tiny: Callable[[Path], dict[str, Any]] | None = None
) -> Callable[[Build], Build]:
    """Decorator registering a backend of `stage` under `name`: the decorated class or function
    takes an `options` instance and returns the backend. A later registration under the same
    stage and name replaces the earlier one."""
    if not (dataclasses.is_dataclass(options) and isinstance(options, type)):
        raise TypeError(f"options of the {name} {stage} backend must be a dataclass type")

    def register(build: Build) -> Build:
        REGISTRY.setdefault(stage, {})[name] = BackendSpec(stage, name, options, build, tiny)
        return build

    return register


def _import_stage(stage: str) -> None:
    if stage not in MODEL_STAGES:
        raise InputError(f"stage must be one of {MODEL_STAGES}, got {stage!r}")
    importlib.import_module(f"s4d_ray.stages.{stage}")


def backend_names(stage: str) -> tuple[str, ...]:
    """Names of the backends registered for `stage`, in registration order."""
    _import_stage(stage)
    return tuple(REGISTRY.get(stage, {}))


def backend_for(stage: str, name: str) -> BackendSpec:
    """The backend of `stage` registered as `name`; InputError naming the choices if none."""
    names = backend_names(stage)
    if name not in names:
        raise InputError(f"backend must be one of {names}, got {name!r}")
    return REGISTRY[stage][name]


def option_defaults(stage: str, name: str) -> dict[str, Any]:
    """Every option of the backend with its default, in the options dataclass's order."""
    return {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(backend_for(stage, name).options)
    }


def validate_options(stage: str, name: str, options: Mapping[str, Any]) -> Any:
    """The backend's options instance built from `options` (unset ones take their defaults);
    `OptionError` for an unknown name, a value of the wrong type or below its bound, or one
    the options dataclass itself rejects."""
    fields = {f.name: f for f in dataclasses.fields(backend_for(stage, name).options)}
    for option, value in options.items():
        if option not in fields:
            raise OptionError(
                option, f"not an option of the {name} {stage} backend; options: {sorted(fields)}"
            )
        problem = type_problem(value, fields[option].type)
        if problem:
            raise OptionError(option, problem)
        minimum = fields[option].metadata.get("minimum")
        if minimum is not None and value is not None and value < minimum:
            raise OptionError(option, f"must be >= {minimum}, got {value!r}")
    return backend_for(stage, name).options(**options)


def tiny_options(stage: str, name: str, folder: Path) -> dict[str, Any]:
    """Options that run a tiny random-weight model of the backend, its files written under
    `folder` (`BackendSpec.tiny`); {} for a backend that needs no files."""
    spec = backend_for(stage, name)
    return spec.tiny(folder) if spec.tiny else {}


def build_stage(stage: str, name: str, **options: Any) -> ModelStage:
    """The stage's callable (`StereoMatcher`, `Tracker`, `Segmenter`) on backend `name`."""
    _import_stage(stage)
    return _STAGE_CLASSES[stage](name, **options)


# --- the stage callables ----------------------------------------------------------------------


def check_frames(frames: np.ndarray, name: str = "frames") -> None:
    """ValueError unless `frames` is [T,H,W,3] uint8 RGB."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != "uint8":
        raise ValueError(f"{name} must be [T,H,W,3] uint8, got {frames.shape} {frames.dtype}")


def check_pair(left: np.ndarray, right: np.ndarray) -> None:
    """ValueError unless `left` is [T,H,W,3] uint8 RGB and `right` has its shape and dtype."""
    check_frames(left, "left")
    if right.shape != left.shape or right.dtype != "uint8":
        raise ValueError(
            f"right must match left {left.shape} uint8, got {right.shape} {right.dtype}"
        )


class ModelStage:
    """Base of the stage callables, built once (e.g. per Ray actor) as
    `Stage(backend_name, **options)` and applied to one clip per call.

    `backend` is the backend object, `options` its checked options dataclass, `backend_name`
    its registered name. A subclass names its stage (`class Tracker(ModelStage,
    stage="tracking")`), checks its frames and may add its own settings to `describe()`.
    """

    stage: ClassVar[str]

    def __init_subclass__(cls, stage: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if stage:
            cls.stage = stage
            _STAGE_CLASSES[stage] = cls

    def __init__(self, backend: str = "cpu", **options: Any) -> None:
        spec = backend_for(self.stage, backend)
        self.backend_name = backend
        self.options: Any = validate_options(self.stage, backend, options)
        self.backend: Any = spec.build(self.options)
        self._provenance: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """The backend's name and provenance (computed once, by `provenance`)."""
        return {"backend": self.backend_name, **self.backend.provenance()}

    def provenance(self) -> dict[str, Any]:
        """What produces this stage's output, for every clip's metadata: backend, model name,
        its config, weights (URI, bytes, sha256; None without weights) and precision."""
        if self._provenance is None:
            self._provenance = self.describe()
        return dict(self._provenance)
