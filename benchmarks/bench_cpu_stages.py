"""Lift and optimiser seconds per 200-frame clip, before/after issue 15, side by side.

Lift: `lift_tracks` + motion displacement on a synthetic 200-frame 512x512 clip (random-walk
tracks over a depth map with invalid regions, a turning and walking camera), the numpy motion
displacement of before (`baseline_cpu_stages`) against the fused JAX kernel, interleaved in
one process (the kernel's first call is reported apart: compile or cache load).

Optimiser: `bench_optimize.make_problem` tracks (85 % static; tracks start in the first half
of the clip and last a quarter to all of it, with random gaps), each measurement in a fresh
process as a job's worker would be:
  before = no persistent compilation cache, 1 << 13 chunk elements, every track padded to the
           clip, gradient by jax.grad (the former code path);
  after  = defaults (tracks cropped to their spans, 1 << 12 chunk elements, hand-written
           gradient) with a warm persistent compilation cache (one earlier process filled it);
  also `after, cold cache` (first process on a machine).

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


def bench_lift(num_tracks: int, num_frames: int, repeats: int) -> dict:
    from benchmarks.baseline_cpu_stages import baseline_motion_displacement
    from s4d_ray.track.lift import lift_tracks, motion_displacement

    tracks, visible, depth, w2c = make_lift_problem(num_tracks, num_frames)
    start = time.process_time()
    points, valid = lift_tracks(tracks, visible, depth, w2c)
    lift_s = time.process_time() - start
    start = time.process_time()
    motion_displacement(points[:8], valid[:8], w2c)
    first_call_s = time.process_time() - start
    seconds = {"before": [], "after": []}
    results = {}
    for _ in range(repeats):
        for name, fn in (("before", baseline_motion_displacement), ("after", motion_displacement)):
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


def _optimizer_worker(
    variant: str, num_tracks: int, num_frames: int, output: str, cache_dir: str
) -> None:
    """One optimiser call on the standard problem in this fresh process; one JSON line."""
    sys.path.insert(0, str(REPO_ROOT))
    if variant == "before":
        os.environ["S4D_JAX_CACHE"] = "0"
    else:
        os.environ["S4D_CACHE_DIR"] = cache_dir
    from benchmarks.bench_optimize import make_problem

    points, visible, centers, motion = make_problem(num_tracks, num_frames)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    from s4d_ray.track.optimize import optimize_clips

    options = {}
    if variant == "before":
        options = {"crop_spans": False, "max_chunk_elements": 1 << 13, "autodiff": True}
    ((optimized, mask),) = optimize_clips([(points, visible, centers, motion)], **options)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    np.save(output, np.where(mask[..., None], optimized, np.nan))
    print(json.dumps({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}))


def _run_worker(variant: str, num_tracks: int, num_frames: int, output: str, cache: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_cpu_stages", "--worker", variant]
    command += ["--tracks", str(num_tracks), "--frames", str(num_frames)]
    command += ["--output", output, "--cache-dir", cache]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_optimizer(num_tracks: int, num_frames: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        cache = str(Path(scratch) / "cache")
        outputs = {v: str(Path(scratch) / f"{v}.npy") for v in ("before", "cold", "after")}
        runs = {
            variant: _run_worker(variant, num_tracks, num_frames, outputs[variant], cache)
            for variant in ("before", "cold", "after")  # `cold` fills the cache `after` reads
        }
        before, after = np.load(outputs["before"]), np.load(outputs["after"])
    both = np.isfinite(before).all(-1) & np.isfinite(after).all(-1)
    difference = np.abs(before - after)[both]
    return {
        "measure": "optimizer_cpu_s_fresh_process",
        "tracks": num_tracks,
        "frames": num_frames,
        "before": runs["before"],
        "after_cold_cache": runs["cold"],
        "after_warm_cache": runs["after"],
        "speedup_cpu": round(runs["before"]["cpu_s"] / runs["after"]["cpu_s"], 2),
        "speedup_cpu_cold_cache": round(runs["before"]["cpu_s"] / runs["cold"]["cpu_s"], 2),
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
    args = parser.parse_args()
    if args.worker:
        _optimizer_worker(args.worker, args.tracks, args.frames, args.output, args.cache_dir)
        return
    results: dict = {"load_average_start": os.getloadavg()}
    if args.only in (None, "lift"):
        results["lift"] = bench_lift(args.tracks, args.frames, args.repeats)
        print(json.dumps(results["lift"]), flush=True)
    if args.only in (None, "optimizer"):
        results["optimizer"] = bench_optimizer(args.tracks, args.frames)
        print(json.dumps(results["optimizer"]), flush=True)
    results["load_average_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
