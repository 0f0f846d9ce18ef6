"""Track optimiser benchmark: reference transcription vs `s4d_ray.track.optimize`, plus a full clip.

Each measurement runs in a fresh Python subprocess, so JAX compilation is part of the time.
Prints wall seconds, process CPU seconds (user + sys, all threads; steadier than wall time on a
shared machine), peak RSS, the machine load, the speed-up, and the largest difference between
the two optimisers' outputs.

    python -m benchmarks.bench_optimize                  # 4,000 x 128 side by side + 25,000 x 200
    python -m benchmarks.bench_optimize --quick          # 1,000 x 64 side by side + 5,000 x 200
    python -m benchmarks.bench_optimize --tracks 2000 --frames 100 --skip-full
    python -m benchmarks.bench_optimize --json-out results.jsonl   # also one JSON line a result

JAX runs on its default backend (a GPU when jax has one); each result names it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_problem(num_tracks: int, num_frames: int, seed: int = 0):
    """Synthetic clip: `points [N,T,3]` m, `visible [N,T]`, `camera_centers [T,3]` m,
    `motion [N,T]` px. 85% static points, 15% moving ones; depth noise along the camera ray
    (sigma = 0.006 z^2 m); random visibility gaps and tracks that start or end mid-clip."""
    rng = np.random.default_rng(seed)
    frames = np.arange(num_frames, dtype=np.float64)[:, None]
    centers = np.concatenate([0.03 * frames, 0.05 * np.sin(frames / 9), 0.01 * frames], axis=1)
    num_moving = num_tracks * 15 // 100
    anchors = rng.uniform([-3, -2, 2], [3, 2, 12], (num_tracks, 1, 3))
    velocity = np.zeros((num_tracks, 1, 3))
    velocity[:num_moving] = rng.normal(0, 0.05, (num_moving, 1, 3))
    truth = anchors + velocity * frames[None]
    ray = truth - centers
    depth = np.linalg.norm(ray, axis=-1, keepdims=True)
    points = centers + ray / depth * (depth + rng.normal(0, 0.006, depth.shape) * depth**2)
    visible = rng.random((num_tracks, num_frames)) > 0.02
    first = rng.integers(0, num_frames // 2, num_tracks)
    length = rng.integers(num_frames // 4, num_frames + 1, num_tracks)
    index = np.arange(num_frames)
    visible &= (index >= first[:, None]) & (index < (first + length)[:, None])
    motion = np.where(
        np.arange(num_tracks)[:, None] < num_moving,
        rng.uniform(10, 120, (num_tracks, num_frames)),
        rng.uniform(0, 12, (num_tracks, num_frames)),
    )
    points[~visible] = np.nan
    return points.astype(np.float32), visible, centers.astype(np.float32), motion.astype(np.float32)


def _worker(implementation: str, num_tracks: int, num_frames: int, output: str | None) -> None:
    """Time one optimiser call in this (fresh) process; print one JSON line."""
    sys.path.insert(0, str(REPO_ROOT))
    points, visible, centers, motion = make_problem(num_tracks, num_frames)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    if implementation == "reference":
        from benchmarks.reference_optimizer import reference_optimize_tracks

        optimized, mask = reference_optimize_tracks(np.nan_to_num(points), visible, centers, motion)
    else:
        from s4d_ray.track.optimize import optimize_tracks

        optimized, mask = optimize_tracks(points, visible, centers, motion)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    if output:
        np.save(output, np.where(mask[..., None], optimized, np.nan))
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    import jax

    figures = {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_gib": peak_rss_gib,
        "backend": jax.default_backend(),
        "devices": [str(device) for device in jax.devices()],
        "jax": jax.__version__,
    }
    print(json.dumps(figures))


def _append(path: str | None, record: dict) -> None:
    """One JSON line per result in `path` (None: nowhere), written as each result comes."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _measure(
    implementation: str,
    num_tracks: int,
    num_frames: int,
    output: str | None,
    json_out: str | None = None,
) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_optimize",
        "--worker",
        implementation,
        "--tracks",
        str(num_tracks),
        "--frames",
        str(num_frames),
    ]
    if output:
        command += ["--output", output]
    load_before = os.getloadavg()[0]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{implementation} worker failed:\n{result.stderr[-4000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["load"] = (load_before, os.getloadavg()[0])
    label = f"{implementation:9s} {num_tracks:6d} x {num_frames:3d}"
    print(
        f"{label}: {figures['wall_s']:8.2f} s wall  {figures['cpu_s']:8.2f} s cpu  "
        f"peak RSS {figures['peak_rss_gib']:.2f} GiB  load {load_before:.1f} -> "
        f"{figures['load'][1]:.1f}  JAX {figures['backend']}",
        flush=True,
    )
    _append(
        json_out,
        {
            "kind": "run",
            "implementation": implementation,
            "tracks": num_tracks,
            "frames": num_frames,
        }
        | figures,
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, help="side-by-side tracks (default 4000)")
    parser.add_argument("--frames", type=int, help="side-by-side frames (default 128)")
    parser.add_argument("--full-tracks", type=int, help="full-clip tracks (default 25000)")
    parser.add_argument("--full-frames", type=int, default=200, help="full-clip frames")
    parser.add_argument("--quick", action="store_true", help="1,000 x 64 and 5,000 x 200")
    parser.add_argument("--skip-reference", action="store_true", help="time ours only")
    parser.add_argument("--skip-full", action="store_true", help="no full-clip run")
    parser.add_argument("--worker", choices=["reference", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help="append each result to this file as a JSON line")
    args = parser.parse_args()
    num_tracks = args.tracks or (1000 if args.quick else 4000)
    num_frames = args.frames or (64 if args.quick else 128)
    if args.worker:
        _worker(args.worker, num_tracks, num_frames, args.output)
        return

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        ours_path = str(Path(scratch) / "ours.npy")
        reference_path = str(Path(scratch) / "reference.npy")
        ours = _measure("ours", num_tracks, num_frames, ours_path, args.json_out)
        if not args.skip_reference:
            reference = _measure("reference", num_tracks, num_frames, reference_path, args.json_out)
            difference = np.abs(np.load(ours_path) - np.load(reference_path))
            comparison = {
                "kind": "comparison",
                "tracks": num_tracks,
                "frames": num_frames,
                "speedup_wall": reference["wall_s"] / ours["wall_s"],
                "speedup_cpu": reference["cpu_s"] / ours["cpu_s"],
                "max_diff_m": float(np.nanmax(difference)),
                "median_diff_m": float(np.nanmedian(difference)),
            }
            print(
                f"speed-up (reference / ours): {comparison['speedup_wall']:.1f}x wall, "
                f"{comparison['speedup_cpu']:.1f}x cpu"
            )
            print(
                f"|ours - reference| over mask frames: max {comparison['max_diff_m']:.2e} m, "
                f"median {comparison['median_diff_m']:.2e} m"
            )
            _append(args.json_out, comparison)
    if not args.skip_full:
        full_tracks = args.full_tracks or (5000 if args.quick else 25000)
        _measure("ours", full_tracks, args.full_frames, None, args.json_out)


if __name__ == "__main__":
    main()
