"""The engine's one stage list: what runs, in which order, how, and on which resources.

Both runners read it — the streamed Ray Data graph (`pipeline.build_dataset`) and the
in-process runner (`pipeline.run_in_process`). Each entry names its per-clip transform and its
kind; its default resources per backend are the configuration's table
(`config.DEFAULT_RESOURCES`, in the same order: a test holds the two together):

- `task`: a stateless CPU transform, `process(row, job) -> row`, run as Ray tasks;
- `actor`: a model pinned in an actor pool: `setup(job)` loads it once per actor,
  `process(row, model) -> row` runs per clip;
- `reducer`: a batch of clips per call (`batch_size(config)` of them): `setup(job)` once per
  actor (or per task when the stage holds no state), `process(rows, state) -> rows`.

Adding a stage = one `StageSpec` here + its transform in `clip_stages` + its row of
`config.DEFAULT_RESOURCES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from s4d_ray.engine import clip_stages
from s4d_ray.engine.clip_stages import DENSE_DEPTH, DENSE_FRAMES, RECORD_COLUMNS, Stage
from s4d_ray.engine.config import PipelineConfig, StageResources, default_resources
from s4d_ray.engine.metrics import report_written

__all__ = ["STAGE", "STAGES", "StageResources", "StageSpec", "default_resources", "is_pool"]

TASK, ACTOR, REDUCER = "task", "actor", "reducer"


@dataclass(frozen=True)
class Job:
    """What a stage may need besides its clip: the run's configuration and output root."""

    config: PipelineConfig
    output: str


def _job(job: Job) -> Job:
    return job


@dataclass(frozen=True)
class StageSpec(Stage):
    """One entry of the stage list: a `Stage` (name, columns) plus how and where it runs."""

    kind: str = TASK
    process: Callable[..., Any] = lambda item, context: item
    setup: Callable[[Job], Any] = _job
    batch_size: Callable[[PipelineConfig], int] | None = None

    @property
    def actor_name(self) -> str:
        """Class name the stage's actors carry in the Ray dashboard, e.g. `StereoActor`."""
        return "".join(part.title() for part in self.name.split("_")) + "Actor"


# --- model set-up (once per actor) ------------------------------------------------------------


def _model_options(job: Job, stage: str) -> dict[str, Any]:
    """The stage's model options from the config; on `neural` plus device and precision."""
    from s4d_ray.models.device import pick_device

    models = job.config.models
    options = dict(getattr(models, stage))
    if job.config.backend == "neural":
        options.update(device=pick_device(models.device), precision=models.precision)
    return options


def setup_stereo(job: Job) -> Any:
    """SEA-RAFT (neural) or SGBM (cpu) stereo matcher."""
    from s4d_ray.stages.stereo import StereoMatcher

    options = _model_options(job, "stereo")
    if isinstance(options.get("config"), dict):
        from s4d_ray.models.sea_raft import SEARAFTConfig

        options["config"] = SEARAFTConfig.from_dict(options["config"])
    return StereoMatcher(job.config.backend, **options)


def setup_tracking(job: Job) -> Any:
    """BootsTAP (neural, official checkpoint by default) or Lucas–Kanade (cpu) tracker."""
    from s4d_ray.stages.tracking import Tracker

    options = _model_options(job, "tracking")
    if job.config.backend == "neural":
        from s4d_ray.models.tapir import DEFAULT_URI

        options.setdefault("weights_uri", DEFAULT_URI)
    return Tracker(job.config.backend, **options)


def setup_segmentation(job: Job) -> Any:
    """DeepLabv3+ ADE20K (neural) or no segmentation (cpu: drift filter off)."""
    from s4d_ray.stages.segmentation import Segmenter

    return Segmenter(job.config.backend, **_model_options(job, "segmentation"))


def setup_optimizer(job: Job) -> Callable[[list], list]:
    """The batched JAX optimiser (compiled once per frame bucket in this actor), applied to a
    batch of clip rows."""
    from s4d_ray.track.optimize import optimize_clips

    return partial(
        clip_stages.optimize_rows,
        optimize_clips=partial(optimize_clips, num_steps=job.config.optimizer.num_steps),
        stage=STAGE["optimize"],
        min_tracks=job.config.min_tracks,
    )


# --- the list ---------------------------------------------------------------------------------

STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "decode",
        consumes=(),
        adds={**RECORD_COLUMNS, "left": ("uint8", 4), "right": ("uint8", 4), **DENSE_FRAMES},
        kind=TASK,
        process=lambda row, job: clip_stages.decode_and_rectify(
            row, job.config.max_npz_bytes, dense=job.config.dense
        ),
    ),
    StageSpec(
        "stereo",
        consumes=("right",),
        adds={"depth": ("float32", 3)},
        kind=ACTOR,
        setup=setup_stereo,
        process=lambda row, matcher: clip_stages.stereo_depth(row, matcher),
    ),
    StageSpec(
        "segmentation",
        consumes=(),
        adds={"label_classes": ("uint8", 4)},
        kind=ACTOR,
        setup=setup_segmentation,
        process=lambda row, segmenter: clip_stages.segment_classes(row, segmenter),
    ),
    StageSpec(
        "tracking",
        consumes=("label_classes",),
        adds={
            "tracks_2d": ("float32", 3),
            "visible": ("bool", 2),
            "query_frame": ("int64", 1),
            "point_classes": ("uint8", 2),
        },
        kind=ACTOR,
        setup=setup_tracking,
        process=lambda row, tracker: clip_stages.track_points(row, tracker),
    ),
    StageSpec(
        "lift",
        consumes=("left", "depth", "tracks_2d", "query_frame", "point_classes"),
        # `visible` stays, cut down to the kept tracks: it is written as the clip's visibility
        adds={
            "points": ("float32", 3),
            "valid": ("bool", 2),
            "motion": ("float32", 2),
            "colours": ("uint8", 2),
            **DENSE_DEPTH,
        },
        kind=TASK,
        process=lambda row, job: clip_stages.lift_and_filter(
            row, job.config.min_tracks, dense=job.config.dense
        ),
    ),
    StageSpec(
        "optimize",
        consumes=("points", "valid"),
        adds={"points_opt": ("float32", 3), "mask": ("bool", 2)},
        kind=REDUCER,
        setup=setup_optimizer,
        process=lambda rows, optimize_rows: optimize_rows(rows),
        batch_size=lambda config: config.optimizer.clips_per_batch,
    ),
    StageSpec(
        "write",
        consumes=(),
        kind=REDUCER,
        process=lambda rows, job: report_written(clip_stages.write_rows(rows, job.output)),
        batch_size=lambda config: config.clips_per_shard,
    ),
)
STAGE: dict[str, StageSpec] = {spec.name: spec for spec in STAGES}


def is_pool(spec: StageSpec) -> bool:
    """Whether the stage runs in an actor pool (it holds state set up once per actor)."""
    return spec.kind == ACTOR or (spec.kind == REDUCER and spec.setup is not _job)
