"""The engine's one stage list: what runs, in which order, how, and on which resources.

Both runners read it — the streamed Ray Data graph (`pipeline.build_dataset`) and the
in-process runner (`runner.run_in_process`). Each entry names its transform, its kind and the
columns it `reads`, `adds` and `drops` (checked on every clip, in both runners: `rows`); its
default resources per backend are the configuration's table (`config.DEFAULT_RESOURCES`, in
the same order: a test holds the two together):

- `task`: a stateless CPU transform, `process(row, job) -> row`, run as Ray tasks;
- `actor`: a model pinned in an actor pool (`pooled`): `setup(job)` loads it once per actor,
  `process(row, model) -> row` runs per clip;
- `reducer`: a batch of clips per call (`batch_size(config)` of them), `process(rows, state)
  -> rows`: `setup(job)` once per actor when `pooled` (the optimiser's jitted state), else
  per Ray task.

Adding a stage = one `StageSpec` here + its transform in `clip_stages` + its row of
`config.DEFAULT_RESOURCES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from s4d_ray.engine import clip_stages
from s4d_ray.engine.clip_stages import DENSE_DEPTH, DENSE_FRAMES, RECORD_COLUMNS, ClipRow
from s4d_ray.engine.config import PipelineConfig, StageResources, default_resources
from s4d_ray.engine.metrics import report_written
from s4d_ray.engine.outputs import active_formats, format_columns
from s4d_ray.engine.rows import Row, Stage, carried_columns

__all__ = ["STAGE", "STAGES", "StageResources", "StageSpec", "default_resources"]

TASK, ACTOR, REDUCER = "task", "actor", "reducer"


@dataclass(frozen=True)
class Job:
    """What a stage may need besides its clip: the run's configuration and output root, the
    id of the run (one per Ray dataset; empty in process) that its workers share, and the
    resources of stages a clip source brings (`pipeline.SourcePlan.stages`)."""

    config: PipelineConfig
    output: str
    run_id: str = ""
    source_resources: dict[str, StageResources] = field(default_factory=dict)

    def resources(self, stage: str) -> StageResources:
        """The stage's resources: a source stage's own, else the configuration's."""
        own = self.source_resources.get(stage)
        return own if own is not None else self.config.resources(stage)


def job_context(job: Job) -> Job:
    """The set-up of a stage that holds no state: its context is the job itself."""
    return job


@dataclass(frozen=True, kw_only=True)
class StageSpec(Stage):
    """One entry of the stage list: a `Stage` (name, columns) plus how and where it runs.
    `pooled`: runs in a Ray actor pool, its `setup` state made once per actor (every `actor`
    stage, and a `reducer` with state); else in Ray tasks, set up per call."""

    kind: str
    process: Callable[..., Any]
    setup: Callable[[Job], Any] = job_context
    pooled: bool = False
    batch_size: Callable[[PipelineConfig], int] | None = None

    def __post_init__(self) -> None:
        if self.kind == ACTOR and not self.pooled:
            raise ValueError(f"stage {self.name!r}: an actor stage runs in a pool (pooled=True)")

    @property
    def actor_name(self) -> str:
        """Class name the stage's actors carry in the Ray dashboard, e.g. `StereoActor`."""
        return actor_name(self.name)


def actor_name(stage: str) -> str:
    """The class name of a stage's actors: `stereo` -> `StereoActor`."""
    return "".join(part.title() for part in stage.split("_")) + "Actor"


# --- model set-up (once per actor) ------------------------------------------------------------


def setup_model(stage: str, job: Job) -> Any:
    """The model stage's callable (`s4d_ray.stages.base.build_stage`) on the configured backend,
    from `models.<stage>` plus the engine's device and precision where the backend takes them."""
    from s4d_ray.models.device import pick_device
    from s4d_ray.stages.base import build_stage, option_defaults

    models, backend = job.config.models, job.config.backend
    options = dict(getattr(models, stage))
    accepted = option_defaults(stage, backend)
    if "device" in accepted:
        options["device"] = pick_device(models.device)
    if "precision" in accepted:
        options["precision"] = models.precision
    return build_stage(stage, backend, **options)


def setup_optimizer(job: Job) -> Callable[[list], list]:
    """The batched JAX optimiser (compiled once per frame bucket in this actor), applied to a
    batch of clip rows."""
    from s4d_ray.track.optimize import OptimizerSettings, optimize_clips

    num_steps = job.config.optimizer.num_steps
    settings = OptimizerSettings() if num_steps is None else OptimizerSettings(num_steps=num_steps)
    return partial(
        clip_stages.optimize_rows,
        optimize_clips=partial(optimize_clips, settings=settings),
        stage=STAGE["optimize"],
        min_tracks=job.config.min_tracks,
    )


# --- stage calls: each entry's `process`, named so tracebacks say which stage --------------


def decode_clip(row: ClipRow, job: Job) -> ClipRow:
    """The decode stage: read the npz, rectify (or decode rectified videos), with the job's
    npz size limit and `dense` setting."""
    return clip_stages.decode_and_rectify(row, job.config.max_npz_bytes, dense=job.config.dense)


def lift_clip(row: ClipRow, job: Job) -> ClipRow:
    """The lift stage with the job's minimum track count and `dense` setting."""
    return clip_stages.lift_and_filter(row, job.config.min_tracks, dense=job.config.dense)


def optimize_batch(
    rows: list[ClipRow], optimize_rows: Callable[[list[ClipRow]], list[ClipRow]]
) -> list[ClipRow]:
    """The optimize stage: the actor's batched optimiser (`setup_optimizer`) on a batch."""
    return optimize_rows(rows)


def write_shard(rows: list[ClipRow], job: Job) -> list[Row]:
    """The write stage: every output format the job writes, then one log line per clip."""
    return report_written(clip_stages.write_rows(rows, job.output, active_formats(job.config)))


def clips_per_optimizer_call(config: PipelineConfig) -> int:
    """Clips per batched optimiser call (`optimizer.clips_per_batch`)."""
    return config.optimizer.clips_per_batch


def clips_per_shard(config: PipelineConfig) -> int:
    """Clips per write call, hence per Parquet shard (`clips_per_shard`)."""
    return config.clips_per_shard


# --- the list ---------------------------------------------------------------------------------

_BEFORE_WRITE: tuple[StageSpec, ...] = (
    StageSpec(
        "decode",
        reads=("npz_uri", "videos_root", "left_uri", "right_uri"),
        adds={**RECORD_COLUMNS, "left": ("uint8", 4), "right": ("uint8", 4), **DENSE_FRAMES},
        kind=TASK,
        process=decode_clip,
    ),
    StageSpec(
        "stereo",
        reads=("left", "right", "camera"),
        adds={"depth": ("float32", 3)},
        drops=("right",),
        kind=ACTOR,
        pooled=True,
        setup=partial(setup_model, "stereo"),
        process=clip_stages.stereo_depth,
    ),
    StageSpec(
        "segmentation",
        reads=("left",),
        adds={"label_classes": ("uint8", 4)},
        kind=ACTOR,
        pooled=True,
        setup=partial(setup_model, "segmentation"),
        process=clip_stages.segment_classes,
    ),
    StageSpec(
        "tracking",
        reads=("left", "label_classes"),
        adds={
            "tracks_2d": ("float32", 3),
            "visible": ("bool", 2),
            "query_frame": ("int64", 1),
            "point_classes": ("uint8", 2),
        },
        drops=("label_classes",),
        kind=ACTOR,
        pooled=True,
        setup=partial(setup_model, "tracking"),
        process=clip_stages.track_points,
    ),
    StageSpec(
        "lift",
        reads=(
            "camera2world",
            "camera",
            "left",
            "depth",
            "tracks_2d",
            "visible",
            "query_frame",
            "point_classes",
        ),
        # `visible` is cut down to the kept tracks: it is written as the clip's visibility
        adds={
            "points": ("float32", 3),
            "valid": ("bool", 2),
            "visible": ("bool", 2),
            "motion": ("float32", 2),
            "colours": ("uint8", 2),
            **DENSE_DEPTH,
        },
        drops=("left", "depth", "tracks_2d", "query_frame", "point_classes"),
        kind=TASK,
        process=lift_clip,
    ),
    StageSpec(
        "optimize",
        reads=("camera2world", "points", "valid", "visible", "motion", "colours"),
        # the per-track columns are cut down to the tracks the optimiser's mask keeps
        adds={
            "points_opt": ("float32", 3),
            "mask": ("bool", 2),
            "visible": ("bool", 2),
            "motion": ("float32", 2),
            "colours": ("uint8", 2),
        },
        drops=("points", "valid"),
        kind=REDUCER,
        pooled=True,
        setup=setup_optimizer,
        process=optimize_batch,
        batch_size=clips_per_optimizer_call,
    ),
)
STAGES: tuple[StageSpec, ...] = (
    *_BEFORE_WRITE,
    StageSpec(
        "write",
        reads=tuple(dict.fromkeys(("mask", *format_columns()))),
        adds=clip_stages.SUMMARY_COLUMNS,
        # the sink: every column a clip carries ends here, in its summary row
        drops=carried_columns(_BEFORE_WRITE),
        kind=REDUCER,
        process=write_shard,
        batch_size=clips_per_shard,
    ),
)
STAGE: dict[str, StageSpec] = {spec.name: spec for spec in STAGES}
