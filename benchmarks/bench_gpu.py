"""GPU readiness in one call: each model's throughput and peak memory in fp32 and bf16, then
the whole neural pipeline on a few synthetic clips, printed as ONE table.

Random weights at the pipeline's shapes (the real files cannot be downloaded here; speed and
memory do not depend on the values). The three engine models are written as checkpoints in
the formats the engine loads (SEA-RAFT safetensors, BootsTAP `.pt` state dict, DeepLab converted
safetensors) by the library's own writers — with --tiny, each backend's own tiny model
(`s4d_ray.stages.base.tiny_options`) —, and run through the stage classes as the pipeline runs
them:

  SEA-RAFT     `StereoMatcher('neural')` on T left/right 512² frames: 2T pairs (fwd + bwd),
               each at half resolution (256²) as the stage runs it            -> pairs/s
  BootsTAP     `TapirBackend`: features of T 512² frames + one query frame's grid of queries
               tracked through all T frames                                    -> query·frames/s
  DeepLab      `Segmenter('neural')` on T 512² frames at the 513² network input -> frames/s
  DynaDUSt3R   `predict_pairs` on B 512² image pairs with query times (ViT-L/16 + DPT + motion
               heads)                                                           -> pairs/s
  TracksTo4D   the network on N tracks × F frames (when s4d_ray.models.tracksto4d exists)
                                                                                -> track·frames/s
  pipeline     `run_pipeline` (Ray Data, neural backend, the default GPU shares; with --tiny
               `run_in_process` unless --runner ray) on K synthetic clips after a one-clip
               warm-up: clips/hour/GPU, seconds per clip of each stage
               and its busy fraction (stage seconds summed over clips / wall seconds).
               Random weights track nothing that survives lifting (0 tracks), so the CPU
               stages after tracking (lift, optimise) are cheaper here than on real weights.

Each model row: one warm-up call, then the mean of 2 timed calls (1 with --tiny). Peak memory
of each model row, from building the model to its last timed call:
`torch.cuda.max_memory_allocated` on GPU (weights included); on CPU the growth of this
process's RSS over that span (sampled every 5 ms; memory freed by earlier rows and reused
does not show).

    python -m benchmarks.bench_gpu            # on a GPU: pipeline shapes; sized for < 8 min on
                                              # one GPU (estimate: not yet run on one)
    python -m benchmarks.bench_gpu --tiny     # anywhere (CPU): tiny configs, ~4 min on 2 cores
    python -m benchmarks.bench_gpu --skip-pipeline --models sea_raft,deeplab
    python -m benchmarks.bench_gpu --plan     # what it would measure, at which sizes; no run
    python -m benchmarks.bench_gpu --json-out rows.jsonl   # also each result as a JSON line

Measuring the models needs torch, numpy, OpenCV and safetensors, not Ray or PyAV (the pipeline
does). `benchmarks/gpu_check.sh` runs this with the optimiser benchmark as one GPU check.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s4d_ray.models.device import PRECISIONS
from s4d_ray.stages.base import MODEL_STAGES

MODELS = ("sea_raft", "bootstap", "deeplab", "dynadust3r", "tracksto4d")
BENCH_PRECISIONS = ("fp32", "bf16")
"""The precisions measured by default (`--precisions`, any of `PRECISIONS`)."""


@dataclass(frozen=True)
class Shapes:
    """Inputs of one run: pipeline shapes on a GPU, tiny ones for a CPU check."""

    frames: int = 32  # T of a clip (stereo, tracking, segmentation inputs)
    size: int = 512  # rectified frame side (px)
    tapir_resolution: int = 512
    tapir_initial_resolution: tuple[int, int] = (256, 256)
    query_stride: int = 8  # one query frame's grid: (size / stride)² queries
    deeplab_input: int = 513
    dust3r_pairs: int = 4
    dust3r_size: int = 512
    dust3r: dict[str, Any] | None = None  # None: ViT-L/16 encoder, ViT-B decoder, DPT
    t4d_tracks: int = 2048
    t4d_frames: int = 50
    t4d: dict[str, Any] | None = None  # None: the official sizes
    iterations: int = 2  # timed calls after one warm-up call
    clips: int = 4
    clip_frames: int = 24
    clip_height: int = 512  # equirect eye height of the synthetic raw video
    tiny: bool = False  # each engine model's tiny config (SEA-RAFT: not spring-M), everywhere


GPU_SHAPES = Shapes()
TINY_SHAPES = Shapes(
    frames=4,
    size=64,
    tapir_resolution=64,
    tapir_initial_resolution=(32, 32),
    query_stride=16,
    deeplab_input=65,
    dust3r_pairs=1,
    dust3r_size=64,
    dust3r={
        "enc_embed_dim": 32,
        "enc_depth": 2,
        "enc_num_heads": 2,
        "dec_embed_dim": 32,
        "dec_depth": 4,
        "dec_num_heads": 2,
        "dpt_layer_dims": (8, 16, 32, 32),
        "dpt_feature_dim": 16,
        "dpt_last_dim": 8,
        "time_embed_dim": 8,
    },
    t4d_tracks=64,
    t4d_frames=8,
    t4d={"network_width1": 16, "network_depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 32},
    iterations=1,
    clips=2,
    clip_frames=6,
    clip_height=256,
    tiny=True,
)


# --------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory of a block (MiB): on GPU the CUDA allocator's peak (what stays allocated
    from before counts too); on CPU the growth of the process RSS from the block's start to its
    peak, sampled every 5 ms."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process = psutil.Process()
        self._stop = threading.Event()
        self._rss = self._entry_rss = process.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._rss = max(self._rss, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mib = (self._rss - self._entry_rss) / 2**20


@dataclass
class Row:
    name: str
    precision: str
    unit: str
    rate: float = float("nan")
    seconds_per_call: float = float("nan")
    peak_mib: float = float("nan")
    note: str = ""


def timed(device: str, call: Callable[[], object], iterations: int) -> float:
    """Seconds per call over `iterations` calls after one warm-up call."""
    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    call()
    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        call()
    sync()
    return (time.perf_counter() - start) / iterations


# --------------------------------------------------------------------------- checkpoints


CHECKPOINT_STAGES = {"sea_raft": "stereo", "bootstap": "tracking", "deeplab": "segmentation"}
"""The bench models that load an engine checkpoint, and the stage whose checkpoint it is."""


def write_checkpoints(
    folder: Path, shapes: Shapes, stages: tuple[str, ...] = MODEL_STAGES
) -> dict[str, dict[str, Any]]:
    """Random-weight checkpoints of the engine models of `stages` (default all three), in the
    official formats the engine loads; returns each stage's `models.<stage>` options that run
    its checkpoint. With `shapes.tiny` each neural backend's tiny model and options
    (`tiny_options`), else the full-size models."""
    from s4d_ray.stages.base import tiny_options

    if shapes.tiny:
        return {stage: tiny_options(stage, "neural", folder) for stage in stages}

    import torch
    from safetensors.torch import save_model

    from s4d_ray.models import deeplab
    from s4d_ray.models.sea_raft import SEARAFT, SPRING_M_CONFIG
    from s4d_ray.models.tapir import TAPIR

    torch.manual_seed(0)
    paths = {
        "stereo": str(folder / "sea_raft.safetensors"),
        "tracking": str(folder / "bootstapir_checkpoint_v2.pt"),
        "segmentation": str(folder / "deeplab_xception65_ade20k.safetensors"),
    }
    if "stereo" in stages:
        save_model(SEARAFT(SPRING_M_CONFIG), paths["stereo"])
    if "tracking" in stages:
        torch.save(TAPIR().state_dict(), paths["tracking"])
    if "segmentation" in stages:
        model = deeplab.DeepLabV3Plus(deeplab.DeepLabConfig())
        deeplab.save_converted(model.state_dict(), model.config, paths["segmentation"])
    return {stage: {"weights_uri": path} for stage, path in paths.items() if stage in stages}


# --------------------------------------------------------------------------- the models


Options = dict[str, dict[str, Any]]
"""Each stage's `models.<stage>` options (`write_checkpoints`)."""


def bench_sea_raft(device: str, precision: str, shapes: Shapes, options: Options) -> Row:
    from s4d_ray.stages.stereo import SEARAFTStereo, StereoMatcher

    matcher = StereoMatcher("neural", **options["stereo"], device=device, precision=precision)
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (shapes.frames, shapes.size, shapes.size, 3), np.uint8)
    right = np.roll(left, -8, axis=2)
    seconds = timed(device, lambda: matcher(left, right), shapes.iterations)
    assert isinstance(matcher.backend, SEARAFTStereo)
    batch = matcher.backend.batch_size or ("fitted to free memory" if device == "cuda" else 8)
    return Row(
        "SEA-RAFT",
        precision,
        "pairs/s",
        2 * shapes.frames / seconds,
        seconds,
        float("nan"),  # set by bench_model
        f"{2 * shapes.frames} pairs {shapes.size}² at half res, batch {batch}",
    )


def bench_bootstap(device: str, precision: str, shapes: Shapes, options: Options) -> Row:
    import torch

    from s4d_ray.models.tapir import TAPIR
    from s4d_ray.stages.tracking import TapirBackend

    torch.manual_seed(0)
    model = TAPIR(initial_resolution=shapes.tapir_initial_resolution)
    backend = TapirBackend(
        model, device=device, precision=precision, resolution=shapes.tapir_resolution
    )
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (shapes.frames, shapes.size, shapes.size, 3), np.uint8)
    grid = np.arange(shapes.query_stride / 2, shapes.size, shapes.query_stride, dtype=np.float32)
    queries = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)

    def call() -> None:
        backend(frames)(shapes.frames // 2, queries)

    seconds = timed(device, call, shapes.iterations)
    work = len(queries) * shapes.frames
    return Row(
        "BootsTAP",
        precision,
        "query·frames/s",
        work / seconds,
        seconds,
        float("nan"),  # set by bench_model
        f"{len(queries)} queries x {shapes.frames} frames at {shapes.tapir_resolution}²",
    )


def bench_deeplab(device: str, precision: str, shapes: Shapes, options: Options) -> Row:
    from s4d_ray.stages.segmentation import Segmenter

    segmenter = Segmenter(
        "neural",
        **{**options["segmentation"], "input_size": shapes.deeplab_input},
        device=device,
        precision=precision,
    )
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (shapes.frames, shapes.size, shapes.size, 3), np.uint8)
    seconds = timed(device, lambda: segmenter.segment(frames), shapes.iterations)
    return Row(
        "DeepLab",
        precision,
        "frames/s",
        shapes.frames / seconds,
        seconds,
        float("nan"),  # set by bench_model
        f"{shapes.frames} frames at {shapes.deeplab_input}², batch {segmenter.options.batch_size}",
    )


def bench_dynadust3r(device: str, precision: str, shapes: Shapes, options: Options) -> Row:
    import torch

    from s4d_ray.dynadust3r.inference import predict_pairs
    from s4d_ray.models.dynadust3r import DynaDUSt3R, DynaDUSt3RConfig

    torch.manual_seed(0)
    config = DynaDUSt3RConfig(**shapes.dust3r) if shapes.dust3r else DynaDUSt3RConfig()
    model = DynaDUSt3R(config).to(device).eval()
    rng = np.random.default_rng(0)
    size, pairs = shapes.dust3r_size, shapes.dust3r_pairs
    image1 = rng.integers(0, 256, (pairs, size, size, 3), np.uint8)
    image2 = rng.integers(0, 256, (pairs, size, size, 3), np.uint8)
    times = np.linspace(0, 1, pairs, dtype=np.float32)
    seconds = timed(
        device,
        lambda: predict_pairs(model, image1, image2, times, torch.device(device), precision),
        shapes.iterations,
    )
    note = f"{pairs} pairs {size}², {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params"
    if device != "cuda" and precision != "fp32":
        note += "; CPU runs fp32 (predict_pairs autocasts on CUDA only)"
    return Row("DynaDUSt3R", precision, "pairs/s", pairs / seconds, seconds, note=note)


def bench_tracksto4d(device: str, precision: str, shapes: Shapes, options: Options) -> Row:
    try:
        from s4d_ray.models.tracksto4d import TracksTo4D, TracksTo4DConfig
    except ImportError as error:
        return Row("TracksTo4D", precision, "track·frames/s", note=f"not present: {error}")
    import torch

    from s4d_ray.models.device import autocast

    torch.manual_seed(0)
    config = TracksTo4DConfig(**shapes.t4d) if shapes.t4d else TracksTo4DConfig()
    model = TracksTo4D(config).to(device).eval()
    n, f = shapes.t4d_tracks, min(shapes.t4d_frames, config.max_cameras)
    tracks = torch.rand(1, n, config.input_channels, f, device=device) * 2 - 1
    if config.use_visible_input:
        tracks[:, :, 2] = 1.0

    def call() -> None:
        with torch.inference_mode(), autocast(device, precision):
            model(tracks)

    seconds = timed(device, call, shapes.iterations)
    return Row(
        "TracksTo4D",
        precision,
        "track·frames/s",
        n * f / seconds,
        seconds,
        float("nan"),  # set by bench_model
        f"{n} tracks x {f} frames",
    )


BENCHES = {
    "sea_raft": bench_sea_raft,
    "bootstap": bench_bootstap,
    "deeplab": bench_deeplab,
    "dynadust3r": bench_dynadust3r,
    "tracksto4d": bench_tracksto4d,
}


def bench_model(name: str, device: str, precision: str, shapes: Shapes, options: Options) -> Row:
    """One model in one precision; an error (e.g. out of memory) becomes the row's note."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    try:
        with PeakMemory(device) as memory:  # model set-up, warm-up and timed calls
            row = BENCHES[name](device, precision, shapes, options)
    except Exception as error:  # report and go on: one table for everything
        return Row(name, precision, "", note=f"FAILED {type(error).__name__}: {str(error)[:120]}")
    row.peak_mib = memory.peak_mib
    return row


# --------------------------------------------------------------------------- the pipeline


@dataclass
class PipelineRun:
    """What the report needs of a run, from `RunSummary` (Ray) or the summary rows (in process)."""

    runner: str
    clips_done: int
    clips_failed: int
    failures_by_stage: dict[str, int]
    stage_seconds_per_clip: dict[str, float]
    wall: float


def in_process_run(summaries: list[dict[str, Any]], wall: float) -> PipelineRun:
    done = [s for s in summaries if s["status"] == "done"]
    failed = [str(s["error_stage"]) for s in summaries if s["status"] != "done"]
    totals: dict[str, float] = {}
    for s in done:
        for stage, seconds in json.loads(s["timings"]).items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    per_clip = {stage: total / len(done) for stage, total in totals.items()}
    by_stage = {stage: failed.count(stage) for stage in set(failed)}
    return PipelineRun("in-process", len(done), len(failed), by_stage, per_clip, wall)


def pipeline_cpus(config: Any) -> int:
    """Logical CPUs the pipeline needs at once on a Ray cluster without an autoscaler: every
    actor pool at its minimum size plus one task of the hungriest task stage (the engine's
    preflight rule). A small machine's local Ray gets at least that many, as
    cluster/local_head.sh gives more logical CPUs than cores."""
    from s4d_ray.engine.stage_list import STAGES

    pools = sum(
        config.stages[spec.name].min_actors * config.stages[spec.name].num_cpus
        for spec in STAGES
        if spec.pooled
    )
    task = max((config.stages[spec.name].num_cpus for spec in STAGES if not spec.pooled), default=0)
    return math.ceil(pools + task)


def bench_pipeline(
    device: str, precision: str, shapes: Shapes, options: Options, root: str, runner: str
) -> PipelineRun:
    """Warm-up clip, then K clips through the engine: `run_pipeline` (Ray Data, streamed) or
    `run_in_process` (the same stage list one clip after another, no Ray)."""
    from s4d_ray.engine.clip_stages import input_rows
    from s4d_ray.engine.config import config_from_dict
    from s4d_ray.engine.pipeline import run_pipeline
    from s4d_ray.engine.runner import run_in_process
    from s4d_ray.geometry.rectify import LowResolutionWarning
    from s4d_ray.synthetic.synth import SynthConfig, synth_dataset

    warnings.simplefilter("ignore", LowResolutionWarning)
    data = os.path.join(root, "data")
    synth_dataset(
        data,
        SynthConfig(
            clips=shapes.clips,
            frames=shapes.clip_frames,
            height=shapes.clip_height,
            tracks=300,
        ),
    )
    npz, raw = os.path.join(data, "npz"), os.path.join(data, "raw")
    models: dict[str, Any] = {"precision": precision, **options}
    stages: dict[str, Any] = {}
    if shapes.tiny:  # a denser grid than the tiny model's, queried more often
        models["tracking"] = {**options["tracking"], "query_stride": 32, "query_frame_interval": 4}
    if device != "cuda":  # no GPU: the model actors must not ask Ray for one
        stages = {name: {"num_gpus": 0.0} for name in MODEL_STAGES}
    config = config_from_dict(
        {
            "backend": "neural",
            "models": models,
            "stages": stages,
            "min_tracks": 0,  # random weights: keep every clip, timings are what count
            "optimizer": {"clips_per_batch": 2},
        }
    )
    if runner == "in-process":
        rows, _ = input_rows(npz, raw)
        run_in_process(rows[:1], config, os.path.join(root, "warmup"))
        start = time.perf_counter()
        summaries = run_in_process(rows, config, os.path.join(root, "measured"))
        return in_process_run(summaries, time.perf_counter() - start)
    import ray

    ray.init(num_cpus=max(os.cpu_count() or 1, pipeline_cpus(config)), include_dashboard=False)
    try:
        run_pipeline(npz, os.path.join(root, "warmup"), config, videos=raw, limit=1)
        start = time.perf_counter()
        summary = run_pipeline(npz, os.path.join(root, "measured"), config, videos=raw)
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    return PipelineRun(
        "ray",
        summary.clips_done,
        summary.clips_failed,
        summary.failures_by_stage,
        summary.stage_seconds_per_clip,
        wall,
    )


# --------------------------------------------------------------------------- report


def print_table(device_name: str, rows: list[Row], pipeline_lines: list[str]) -> None:
    print(f"\nbench_gpu on {device_name}: random weights")
    header = f"{'model':<14} {'prec':<5} {'throughput':>12} {'unit':<15} {'s/call':>8} {'peak MiB':>9}  shapes / notes"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.name:<14} {r.precision:<5} {r.rate:>12.1f} {r.unit:<15} "
            f"{r.seconds_per_call:>8.3f} {r.peak_mib:>9.0f}  {r.note}"
        )
    for line in pipeline_lines:
        print(line)


def pipeline_report(run: PipelineRun, shapes: Shapes, precision: str) -> list[str]:
    wall, done = run.wall, run.clips_done
    per_hour = 3600 * done / wall if wall else float("nan")
    lines = [
        f"{'pipeline':<14} {precision:<5} {per_hour:>12.1f} {'clips/hour/GPU':<15} "
        f"{wall / max(done, 1):>8.1f} {'':>9}  {run.runner}: {done} of {shapes.clips} clips x "
        f"{shapes.clip_frames} frames in {wall:.1f} s after a warm-up clip "
        f"(failed {run.clips_failed}: {run.failures_by_stage})"
    ]
    from s4d_ray.engine.stage_list import STAGES

    for stage in [spec.name for spec in STAGES if spec.name in run.stage_seconds_per_clip]:
        per_clip = run.stage_seconds_per_clip[stage]
        busy = per_clip * done / wall if wall else float("nan")
        lines.append(
            f"{'  ' + stage:<14} {'':<5} {busy:>12.2f} {'busy fraction':<15} {per_clip:>8.2f} "
            f"{'':>9}  s per clip"
        )
    gpu_seconds = sum(run.stage_seconds_per_clip.get(s, 0.0) for s in MODEL_STAGES)
    if gpu_seconds:
        lines.append(
            f"{'  models':<14} {'':<5} {3600 / gpu_seconds:>12.1f} {'clips/hour/GPU':<15} "
            f"{gpu_seconds:>8.2f} {'':>9}  bound of the three model stages back to back "
            "(sum of their s per clip)"
        )
    return lines


def describe(name: str, shapes: Shapes) -> str:
    """What one model row measures at `shapes` (for --plan)."""
    queries = len(np.arange(shapes.query_stride / 2, shapes.size, shapes.query_stride)) ** 2
    return {
        "sea_raft": f"{2 * shapes.frames} pairs {shapes.size}² at half res, "
        + ("a tiny config" if shapes.tiny else "spring-M"),
        "bootstap": f"{queries} queries x {shapes.frames} frames at {shapes.tapir_resolution}²",
        "deeplab": f"{shapes.frames} frames at {shapes.deeplab_input}², Xception-65",
        "dynadust3r": f"{shapes.dust3r_pairs} pairs {shapes.dust3r_size}², "
        + ("a tiny config" if shapes.dust3r else "ViT-L/16 encoder, ViT-B decoder, DPT heads"),
        "tracksto4d": f"{shapes.t4d_tracks} tracks x {shapes.t4d_frames} frames, "
        + ("a tiny config" if shapes.t4d else "the official sizes"),
    }[name]


def plan(
    models: list[str], precisions: list[str], shapes: Shapes, pipeline: str | None, precision: str
) -> list[str]:
    """One line per measurement: what --plan prints instead of measuring."""
    lines = [
        f"{name:<11} {','.join(precisions):<10} {describe(name, shapes)}; 1 warm-up call, "
        f"{shapes.iterations} timed"
        for name in models
    ]
    if pipeline:
        lines.append(
            f"{'pipeline':<11} {precision:<10} {pipeline} runner: {shapes.clips} synthetic clips x "
            f"{shapes.clip_frames} frames ({shapes.clip_height} px eye height) after a warm-up clip"
        )
    return lines


class JsonLines:
    """Append one JSON object per line to a file as results come (None: nowhere), so that a
    run killed by a time limit keeps the rows measured before."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs and inputs (CPU check)")
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--models", default=",".join(MODELS), help="'' for the pipeline only")
    parser.add_argument(
        "--precisions", default=",".join(BENCH_PRECISIONS), help=f"any of {','.join(PRECISIONS)}"
    )
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--pipeline-precision", default="bf16", choices=PRECISIONS)
    parser.add_argument("--clips", type=int, default=0, help="pipeline clips (0: the preset's)")
    parser.add_argument(
        "--runner",
        choices=["ray", "in-process"],
        help="pipeline runner (default: ray on a GPU, in-process with --tiny)",
    )
    parser.add_argument("--json-out", help="append each result to this file as a JSON line")
    parser.add_argument("--plan", action="store_true", help="print what would run, run nothing")
    args = parser.parse_args()

    shapes = TINY_SHAPES if args.tiny else GPU_SHAPES
    if args.clips:
        shapes = dataclasses.replace(shapes, clips=args.clips)
    models = [name for name in args.models.split(",") if name]
    for name in models:
        if name not in BENCHES:
            parser.error(f"unknown model {name!r}; models: {', '.join(MODELS)}")
    precisions = args.precisions.split(",")
    for precision in precisions:
        if precision not in PRECISIONS:
            parser.error(f"unknown precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    runner = None if args.skip_pipeline else args.runner or ("in-process" if args.tiny else "ray")
    if args.plan:
        print("\n".join(plan(models, precisions, shapes, runner, args.pipeline_precision)))
        return

    import torch

    from s4d_ray.models.device import pick_device

    device = pick_device(args.device)
    if device == "cpu" and not args.tiny:
        parser.error("no GPU visible: pipeline shapes on CPU take hours; use --tiny")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        device_name = f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    else:
        device_name = f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    out = JsonLines(args.json_out)
    out.write({"kind": "device", "device": device, "name": device_name, "tiny": args.tiny})
    start = time.perf_counter()
    rows: list[Row] = []
    pipeline_lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="s4d-bench-gpu-") as tmp:
        root = Path(tmp)
        stages = (
            MODEL_STAGES
            if runner
            else tuple(CHECKPOINT_STAGES[m] for m in models if m in CHECKPOINT_STAGES)
        )
        options = write_checkpoints(root, shapes, stages)
        for name in models:
            for precision in precisions:
                rows.append(bench_model(name, device, precision, shapes, options))
                print(json.dumps(dataclasses.asdict(rows[-1])), flush=True)
                out.write({"kind": "model", **dataclasses.asdict(rows[-1])})
        if runner:
            try:
                run = bench_pipeline(
                    device, args.pipeline_precision, shapes, options, str(root / "pipeline"), runner
                )
                pipeline_lines = pipeline_report(run, shapes, args.pipeline_precision)
                out.write(
                    {
                        "kind": "pipeline",
                        "precision": args.pipeline_precision,
                        "clips": shapes.clips,
                        "clip_frames": shapes.clip_frames,
                        **dataclasses.asdict(run),
                    }
                )
            except Exception as error:
                message = f"{type(error).__name__}: {str(error)[:300]}"
                pipeline_lines = [f"pipeline FAILED {message}"]
                out.write({"kind": "pipeline", "error": message})
    print_table(device_name, rows, pipeline_lines)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
