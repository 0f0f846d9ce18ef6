"""TracksTo4D inference speed: one window of F frames × N tracks through the official-size
network (width 256, 3 × (frame, track) attention, 12.8 M parameters; random weights — speed does
not depend on them), in tracks·frames per second, per precision.

    python -m benchmarks.bench_tracksto4d [--frames 50] [--tracks 1000] [--device auto]
        [--precisions fp32 bf16] [--repeats 3] [--threads 0] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from s4d_ray.models.device import autocast_dtype, pick_device
from s4d_ray.models.tracksto4d import OFFICIAL_CONFIG, TracksTo4D


def bench(frames: int, tracks: int, device: str, precision: str, repeats: int) -> dict[str, float]:
    """Median seconds of one forward pass (after one warm-up) and tracks·frames/s."""
    torch.manual_seed(0)
    model = TracksTo4D(OFFICIAL_CONFIG).to(device).eval()
    xy = torch.rand(1, tracks, 2, frames, device=device) - 0.5
    vis = (torch.rand(1, tracks, 1, frames, device=device) > 0.2).float()
    inputs = torch.cat([xy, vis], dim=2)
    dtype = autocast_dtype(precision)
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            out = model(inputs)
        out["points3d"].float().sum().item()  # wait for the result
        if i:  # the first pass is a warm-up
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    result = {
        "device": device,
        "precision": precision,
        "frames": frames,
        "tracks": tracks,
        "seconds": seconds,
        "track_frames_per_s": tracks * frames / seconds,
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    results = []
    for precision in args.precisions:
        results.append(bench(args.frames, args.tracks, device, precision, args.repeats))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
