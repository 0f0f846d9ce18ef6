"""Lift and optimiser seconds per 200-frame clip, before/after the tracking-cost work, side by side.

Lift: `lift_tracks` + motion displacement on a synthetic 200-frame 512x512 clip (random-walk
tracks over a depth map with invalid regions, a turning and walking camera), the numpy motion
displacement of before (`s4d_ray/track/lift.py` at `--baseline`, read from git history)
against the fused JAX kernel, interleaved in one process (the kernel's first call is
reported apart: compile or cache load).

Optimiser: `bench_optimize.make_problem` tracks (85 % static; tracks start in the first half
of the clip and last a quarter to all of it, with random gaps). Each side runs in a fresh
process, as a job's reducer would, and optimises the clip twice: the first clip (import,
compile or cache load, optimise) and a later clip (optimise only):
  before = `s4d_ray/track/optimize.py` as it was at `--baseline` (default: the last commit
           before the tracking-cost work), read from git history: every track padded to the clip, gradient
           by jax.grad, no persistent compilation cache;
  after  = this checkout (tracks cropped to their spans, hand-written gradient, concatenate-
           free shifts) with a warm persistent compilation cache (one earlier process filled
           it); also `after, cold cache` (the first process on a machine).
Both befores need git history (a full clone).

    python -m benchmarks.bench_cpu_stages                 # 40,000 tracks x 200 frames
    python -m benchmarks.bench_cpu_stages --tracks 10000  # quicker

Prints CPU seconds (process time: user + sys of all threads; steadier than wall time on a
shared machine), wall seconds, the speed-ups and the largest output differences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_lift_problem(num_tracks: int, num_frames: int, size: int = 512, seed: int = 0):
    """tracks [N,T,2] px, visible [N,T], depth [T,S,S] m (0 = invalid), world2camera [T,3,4]."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(1.0, 25.0, (num_frames, size, size)).astype(np.float32)
    depth[:, : size // 5] = 0.0  # a sky band without depth
    start = rng.uniform(0, size, (num_tracks, 1, 2))
    steps = rng.normal(0, 0.5, (num_tracks, num_frames, 2))
    tracks = (start + np.cumsum(steps, axis=1)).astype(np.float32)
    visible = rng.random((num_tracks, num_frames)) > 0.2
    world2camera = np.zeros((num_frames, 3, 4), np.float64)
    for t, angle in enumerate(np.linspace(0.0, 0.3, num_frames)):
        c, s = np.cos(angle), np.sin(angle)
        world2camera[t, :, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        world2camera[t, :, 3] = [0.02 * t, 0.0, 0.01 * t]
    return tracks, visible, depth, world2camera


def bench_lift(num_tracks: int, num_frames: int, repeats: int, revision: str) -> dict:
    from functools import partial

    from s4d_ray.geometry.camera import RELEASE_CAMERA
    from s4d_ray.track.lift import lift_tracks, motion_displacement

    baseline_motion_displacement = _load_baseline(
        "s4d_ray/track/lift.py", revision
    ).motion_displacement

    tracks, visible, depth, w2c = make_lift_problem(num_tracks, num_frames)
    start = time.process_time()
    points, valid = lift_tracks(tracks, visible, depth, w2c, RELEASE_CAMERA)
    lift_s = time.process_time() - start
    start = time.process_time()
    after_motion_displacement = partial(motion_displacement, camera=RELEASE_CAMERA)
    after_motion_displacement(points[:8], valid[:8], w2c)
    first_call_s = time.process_time() - start
    seconds = {"before": [], "after": []}
    results = {}
    for _ in range(repeats):
        for name, fn in (
            ("before", baseline_motion_displacement),  # its 512 px, 60° defaults
            ("after", after_motion_displacement),
        ):
            start = time.process_time()
            results[name] = fn(points, valid, w2c)
            seconds[name].append(time.process_time() - start)
    before, after = min(seconds["before"]), min(seconds["after"])
    return {
        "measure": "lift_stage_cpu_s",
        "tracks": num_tracks,
        "frames": num_frames,
        "lift_tracks_s": round(lift_s, 2),
        "motion_before_s": round(before, 2),
        "motion_after_s": round(after, 2),
        "motion_first_call_s": round(first_call_s, 2),
        "lift_stage_before_s": round(lift_s + before, 2),
        "lift_stage_after_s": round(lift_s + after, 2),
        "lift_stage_speedup": round((lift_s + before) / (lift_s + after), 2),
        "motion_speedup": round(before / after, 2),
        "motion_max_abs_difference_px": float(np.abs(results["before"] - results["after"]).max()),
    }


BASELINE_REVISION = "64d943e"
"""The last commit before the tracking-cost work: its `s4d_ray/track/lift.py` and `optimize.py` are the
before of motion displacement and of the optimiser."""


def _load_baseline(module_path: str, revision: str):
    """The module at `module_path` as of `revision`, read from this checkout's git history and
    imported under a name of its own (both baselines import only numpy, jax, optax and
    `s4d_ray.geometry.camera`, which the current checkout provides)."""
    import importlib.util

    try:
        source = subprocess.run(
            ["git", "show", f"{revision}:{module_path}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(
            f"bench_cpu_stages: the baseline {module_path} needs git history with {revision} "
            f"(a full clone, not a shallow one): {e}"
        ) from e
    name = "baseline_" + Path(module_path).stem
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _optimizer_worker(
    variant: str, num_tracks: int, num_frames: int, output: str, cache_dir: str, revision: str
) -> None:
    """Two optimiser calls on the standard problem in this fresh process (the first clip of
    a job's reducer, then a later one); one JSON line."""
    sys.path.insert(0, str(REPO_ROOT))
    os.environ["S4D_CACHE_DIR"] = cache_dir
    from benchmarks.bench_optimize import make_problem

    clip = make_problem(num_tracks, num_frames)
    calls = []
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    if variant == "before":
        optimize_clips = _load_baseline("s4d_ray/track/optimize.py", revision).optimize_clips
    else:
        from s4d_ray.track.optimize import optimize_clips
    for _ in range(2):
        ((optimized, mask),) = optimize_clips([clip])
        calls.append(
            {
                "wall_s": round(time.perf_counter() - start_wall, 2),
                "cpu_s": round(time.process_time() - start_cpu, 2),
            }
        )
        start_wall, start_cpu = time.perf_counter(), time.process_time()
    np.save(output, np.where(mask[..., None], optimized, np.nan))
    print(json.dumps({"first_clip": calls[0], "later_clip": calls[1]}))


def _run_worker(variant: str, args: argparse.Namespace, output: str, cache: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_cpu_stages", "--worker", variant]
    command += ["--tracks", str(args.tracks), "--frames", str(args.frames)]
    command += ["--output", output, "--cache-dir", cache, "--baseline", args.baseline]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_optimizer(args: argparse.Namespace) -> dict:
    """Before (the code at `--baseline`) and after, each in fresh processes: the first clip of a
    process (import, compile or cache load, optimise) and a later clip (optimise only)."""
    with tempfile.TemporaryDirectory() as scratch:
        cache = str(Path(scratch) / "cache")
        outputs = {v: str(Path(scratch) / f"{v}.npy") for v in ("before", "cold", "after")}
        runs = {
            variant: _run_worker(variant, args, outputs[variant], cache)
            for variant in ("before", "cold", "after")  # `cold` fills the cache `after` reads
        }
        before, after = np.load(outputs["before"]), np.load(outputs["after"])
    both = np.isfinite(before).all(-1) & np.isfinite(after).all(-1)
    difference = np.abs(before - after)[both]

    def speedup(run: str, call: str, clock: str) -> float:
        return round(runs["before"][call][clock] / runs[run][call][clock], 2)

    return {
        "measure": "optimizer_s_per_clip",
        "tracks": args.tracks,
        "frames": args.frames,
        "baseline": args.baseline,
        "before": runs["before"],
        "after_cold_cache": runs["cold"],
        "after_warm_cache": runs["after"],
        "speedup_later_clip": {c: speedup("after", "later_clip", c) for c in ("wall_s", "cpu_s")},
        "speedup_first_clip_warm_cache": {
            c: speedup("after", "first_clip", c) for c in ("wall_s", "cpu_s")
        },
        "speedup_first_clip_cold_cache": {
            c: speedup("cold", "first_clip", c) for c in ("wall_s", "cpu_s")
        },
        "nan_pattern_equal": bool((np.isnan(before) == np.isnan(after)).all()),
        "max_abs_difference_m": float(difference.max()),
        "median_abs_difference_m": float(np.median(difference)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=40000)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("lift", "optimizer"))
    parser.add_argument("--out", default="bench_cpu_stages.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline",
        default=BASELINE_REVISION,
        help="git revision whose motion displacement and optimiser are the before "
        "(default: before the tracking-cost work)",
    )
    args = parser.parse_args()
    if args.worker:
        _optimizer_worker(
            args.worker, args.tracks, args.frames, args.output, args.cache_dir, args.baseline
        )
        return
    results: dict = {"load_average_start": os.getloadavg()}
    if args.only in (None, "lift"):
        results["lift"] = bench_lift(args.tracks, args.frames, args.repeats, args.baseline)
        print(json.dumps(results["lift"]), flush=True)
    if args.only in (None, "optimizer"):
        results["optimizer"] = bench_optimizer(args)
        print(json.dumps(results["optimizer"]), flush=True)
    results["load_average_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
