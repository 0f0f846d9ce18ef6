"""The streamed Ray pipeline against the same stages run one after another in one process.

On K synthetic clips with the CPU backends:
  * sequential: every stage of every clip in this process, no Ray (`run_in_process`);
  * streamed: the job on a local Ray cluster (started before timing): the Ray Data pipeline,
    then the run report, as `s4d run` does (`engine.command.run_job`);
  * Ray overhead on one clip: streamed wall time of a single clip minus its sequential time.

    python -m benchmarks.bench_pipeline [--clips 4] [--frames 16] [--height 512]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings

from s4d_ray.engine.clip_stages import input_rows
from s4d_ray.engine.command import run_job
from s4d_ray.engine.config import PipelineConfig
from s4d_ray.engine.runner import run_in_process
from s4d_ray.geometry.rectify import LowResolutionWarning
from s4d_ray.synthetic.synth import SynthConfig, synth_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=512)
    args = parser.parse_args()
    warnings.simplefilter("ignore", LowResolutionWarning)
    import ray

    with tempfile.TemporaryDirectory() as root:
        data = os.path.join(root, "data")
        synth_dataset(data, SynthConfig(clips=args.clips, frames=args.frames, height=args.height))
        npz, raw = os.path.join(data, "npz"), os.path.join(data, "raw")
        config = PipelineConfig()

        rows, _ = input_rows(npz, raw)
        run_in_process(rows[:1], config, os.path.join(root, "warmup"))  # JIT compile, imports
        t0 = time.perf_counter()
        summaries = run_in_process(
            input_rows(npz, raw)[0], config, os.path.join(root, "sequential")
        )
        sequential = time.perf_counter() - t0
        stage_sum: dict[str, float] = {}
        for summary in summaries:
            for stage, seconds in json.loads(summary["timings"]).items():
                stage_sum[stage] = stage_sum.get(stage, 0.0) + seconds

        t0 = time.perf_counter()
        ray.init(num_cpus=max(os.cpu_count() or 1, 4), include_dashboard=False)
        ray_start = time.perf_counter() - t0
        run_job(npz, os.path.join(root, "warm_ray"), config, videos=raw, limit=1)
        t0 = time.perf_counter()
        streamed = run_job(npz, os.path.join(root, "streamed"), config, videos=raw)
        streamed_s = time.perf_counter() - t0

        one_npz = os.path.join(root, "one")
        os.makedirs(one_npz)
        first = sorted(os.listdir(npz))[0]
        os.link(os.path.join(npz, first), os.path.join(one_npz, first))
        t0 = time.perf_counter()
        run_job(one_npz, os.path.join(root, "one_ray"), config, videos=raw)
        one_ray = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_in_process(input_rows(one_npz, raw)[0], config, os.path.join(root, "one_local"))
        one_local = time.perf_counter() - t0
        ray.shutdown()

    print(
        f"{args.clips} clips x {args.frames} frames, {2 * args.height}x{args.height} raw, cpu backends, "
        f"{os.cpu_count()} cores"
    )
    print(
        "sequential stage seconds (sum over clips): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(stage_sum.items()))
    )
    print(f"{'run':<44}{'wall s':>9}{'clips/h':>10}")
    print(
        f"{'sequential, one process (sum of stages)':<44}{sequential:>9.1f}{3600 * args.clips / sequential:>10.0f}"
    )
    print(
        f"{'streamed Ray Data pipeline':<44}{streamed_s:>9.1f}{3600 * args.clips / streamed_s:>10.0f}"
    )
    print(
        f"streamed / sequential: {streamed_s / sequential:.2f}  (clips done: {streamed.clips_done})"
    )
    print(
        f"Ray overhead on one clip: {one_ray - one_local:.1f} s ({one_ray:.1f} s on Ray vs "
        f"{one_local:.1f} s in process); ray.init: {ray_start:.1f} s"
    )


if __name__ == "__main__":
    main()
