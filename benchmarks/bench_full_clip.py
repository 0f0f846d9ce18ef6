"""Full-size clips through the whole engine: memory, object store, spilling, seconds per stage.

Renders ONE synthetic clip of `--frames` frames (equirect eyes `--height` px; rectified to
512² by the engine) and copies it under new video ids / clip names (written with
`s4d_ray.io.clip_io`, so every copy is a valid clip), then:

  * cpu: all `--clips` clips through the streamed Ray Data pipeline with the CPU backends on a
    local Ray cluster with a `--object-store-gib` object store. A sampler thread records, every
    `--interval` s, the RSS of the driver and of every Ray process (raylet, GCS, workers and
    actors), the object store's bytes in use, spilled and restored (the raylet's store stats,
    as `ray memory --stats-only` prints them) and how many clips are written. Printed: peak
    RSS per process, min/max of the summed RSS and of the store while each clip was the next
    to finish (bounded memory = these do not grow from clip to clip), spilling, and seconds per
    stage per clip from summary.json.
  * neural: one clip cut to `--neural-frames` frames through the `neural` backend on CPU
    (num_gpus=0) with full-size random-weight models in their official checkpoint formats
    (SEA-RAFT spring-M, BootsTAP, DeepLabV3+ Xception-65 output stride 8): peak RSS per
    process and seconds per stage.

The input npz's release tracks are placeholders (static world points): the engine computes its
own tracks and reads only the cameras, rig rotations, fov bounds and timestamps of the input.

Measured on the 2-core, 24 GiB dev machine (otherwise idle), nice 5.
`--frames 200 --clips 12 --height 256`, 4 GiB store, 4 logical CPUs:
  * 12/12 clips done in 425 s, no OOM kill, no failure.
  * Seconds per clip: decode 0.8, stereo 20.6, tracking 6.8, lift 3.4, optimize 0.7, write 0.1.
  * Peak RSS (private = RSS minus shared pages): TrackingActor 5.4 GiB (3.3 GiB private),
    StereoActor 3.8 GiB (2.0), write task worker 3.6 GiB (1.1), SegmentationActor 2.4 GiB
    (0.1), OptimizeActor 1.9 GiB (1.1), decode workers 0.55 GiB, driver 0.34 GiB.
  * Object store: peak 2.0 GiB in use of 4 GiB, 0 B spilled.
  * Sum of private memory over all processes, per window between clip writes (the optimiser
    writes 4 clips at a time, so clips 1, 5 and 9 open the windows): max 4.8, 6.4 and 7.1 GiB,
    then 2.1 GiB after the last clip. The steps shrink as the pipeline fills (each actor
    holds up to 4 clips in flight); tracking and lift of one 200-frame clip repeated 8 times
    in one process stayed at 2,879 MiB anonymous memory, so the stage code itself does not
    grow.
`--skip-cpu` (the neural clip through Ray: 4 frames at 512², tracking query stride 32, model
pools at 0.5 CPU, decode 1 CPU, optimiser 0.5 CPU):
  * 1/1 clip in 87 s; seconds: stereo 13.3, tracking 16.7, segmentation 42.0.
  * Peak RSS: SegmentationActor 1.4 GiB, TrackingActor 1.2 GiB, StereoActor 1.0 GiB.
  * With the neural defaults (sized for GPU nodes: 2-CPU decode and optimiser, 1 CPU per
    model actor) the pools filled the 4-CPU cluster and the run waited forever; the driver's
    preflight now refuses such a config at once.

    python -m benchmarks.bench_full_clip [--frames 200] [--clips 6] [--height 384]
        [--object-store-gib 4] [--neural-frames 4] [--neural-in-process] [--skip-cpu]
        [--skip-neural] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from s4d_ray.engine.config import config_from_dict
from s4d_ray.geometry.rectify import LowResolutionWarning
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, read_clip, write_clip
from s4d_ray.io.ids import make_clip_id
from s4d_ray.io.video import write_video
from s4d_ray.synthetic.synth import FOV_BOUNDS, build_scene, render_equirect_frame

MIB = 1024 * 1024


def render_long_clip(out_dir: str, frames: int, height: int, fps: float = 30.0) -> str:
    """One synthetic clip of `frames` frames (raw/<video>.mp4 [height, 2*height] and npz/);
    returns its clip id. Two lead and two tail frames as in the release videos."""
    rng = np.random.default_rng([16, 2])
    scene = build_scene(rng, 4)
    video_id = "longclip0000"
    video_times = np.arange(frames + 4) / fps
    timestamps = np.round(video_times * 1e6).astype(np.int64)
    clip = slice(2, 2 + frames)
    clip_id = make_clip_id(video_id, int(timestamps[clip][0]))
    t0 = time.perf_counter()
    write_video(
        fs.join(out_dir, "raw", f"{video_id}.mp4"),
        (render_equirect_frame(scene, t, height) for t in video_times),
        fps=fps,
    )
    c2w = np.stack([scene.camera2world(t) for t in video_times[clip]]).astype(np.float32)
    # placeholder release tracks: 64 static world points 2-6 m ahead of the first camera
    ahead = rng.normal(size=(64, 3)) * [1.0, 0.5, 0.0] + [0.0, 0.0, 1.0]
    points = c2w[0, :, 3] + (ahead * rng.uniform(2, 6, (64, 1))) @ c2w[0, :, :3].T
    dense = np.repeat(points[:, None], frames, axis=1)
    record = ClipRecord(
        name=clip_id,
        video_id=video_id,
        timestamps=timestamps[clip],
        camera2world=c2w,
        rectified2rig=scene.rectified2rig.astype(np.float32),
        fov_bounds=FOV_BOUNDS.astype(np.float32),
        **ClipRecord.sparse_from_dense(dense, np.ones((64, frames), bool)),
    )
    write_clip(record, fs.join(out_dir, "npz", f"{clip_id}.npz"))
    print(
        f"rendered {clip_id}: {frames} frames at {height}x{2 * height} in {time.perf_counter() - t0:.0f} s"
    )
    return clip_id


def copy_clip(out_dir: str, clip_id: str, index: int, frames: int | None = None) -> str:
    """The clip under a new video id (video bytes copied), optionally cut to its first
    `frames` frames; written with clip_io. Returns the new clip id."""
    record = read_clip(fs.join(out_dir, "npz", f"{clip_id}.npz"))
    tracks = record.dense_tracks()
    if frames is not None:
        record.timestamps, record.camera2world = (
            record.timestamps[:frames],
            record.camera2world[:frames],
        )
        tracks = tracks[:, :frames]
        sparse = ClipRecord.sparse_from_dense(tracks, np.isfinite(tracks).all(-1))
        record.track_lengths = sparse["track_lengths"]
        record.track_indices = sparse["track_indices"]
        record.track_coordinates = sparse["track_coordinates"]
    source_video = record.video_id
    record.video_id = f"copy{index:04d}{source_video[:4]}"
    record.name = make_clip_id(record.video_id, int(record.timestamps[0]))
    shutil.copyfile(
        os.path.join(out_dir, "raw", f"{source_video}.mp4"),
        os.path.join(out_dir, "raw", f"{record.video_id}.mp4"),
    )
    write_clip(record, fs.join(out_dir, "npz", f"{record.name}.npz"))
    return record.name


@dataclass
class Sample:
    t: float
    clips_written: int
    rss: dict[int, int]  # pid -> bytes
    private: dict[int, int]  # pid -> RSS minus shared pages (plasma is shared memory)
    store_used: int
    spilled: int
    restored: int


class Sampler(threading.Thread):
    """Samples the driver and its Ray processes (psutil) and the object store every `interval` s."""

    def __init__(self, npz_out: str, interval: float = 1.0, store: bool = True) -> None:
        super().__init__(daemon=True)
        self.npz_out, self.interval, self.store = npz_out, interval, store
        self.samples: list[Sample] = []
        self.titles: dict[int, str] = {}
        self.halt = threading.Event()
        self.store_errors: list[str] = []
        self.progress_every = max(1, round(30 / interval))

    def _store(self) -> tuple[int, int, int]:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        try:
            stats = get_memory_info_reply(get_state_from_address(), timeout_seconds=10).store_stats
        except Exception as error:  # a busy raylet: keep the RSS sample, mark the store unknown
            self.store_errors.append(repr(error)[:200])
            return -1, -1, -1
        return (
            int(stats.object_store_bytes_used),
            int(stats.spilled_bytes_total),
            int(stats.restored_bytes_total),
        )

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        start = time.time()
        while not self.halt.is_set():
            rss, private = {}, {}
            for proc in [me, *me.children(recursive=True)]:
                try:
                    mem = proc.memory_info()
                    cmdline = proc.cmdline()
                    title = "driver" if proc.pid == me.pid else proc.name()
                    if cmdline and cmdline[0].startswith("ray::"):
                        title = cmdline[0]
                    elif title.startswith("python") and len(cmdline) > 1:
                        title = "python " + os.path.basename(cmdline[1])
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss[proc.pid], private[proc.pid] = mem.rss, mem.rss - mem.shared
                if "IDLE" not in title or proc.pid not in self.titles:
                    self.titles[proc.pid] = title
            try:
                written = len([n for n in os.listdir(self.npz_out) if n.endswith(".npz")])
            except FileNotFoundError:
                written = 0
            used, spilled, restored = self._store() if self.store else (-1, -1, -1)
            self.samples.append(
                Sample(time.time() - start, written, rss, private, used, spilled, restored)
            )
            if len(self.samples) % self.progress_every == 1:  # partial figures, should Ray die
                print(
                    f"[sample t={self.samples[-1].t:.0f}s] clips written {written}, "
                    f"sum RSS {sum(rss.values()) / MIB:.0f} MiB, largest "
                    f"{max(rss.values()) / MIB:.0f} MiB, store {used / MIB:.0f} MiB, "
                    f"spilled {spilled / MIB:.0f} MiB",
                    flush=True,
                )
            self.halt.wait(self.interval)


def _short(title: str) -> str:
    return title[:42]


def report(sampler: Sampler, clips: int) -> dict:
    """Print peaks per process and per-clip windows; return the figures."""
    peak: dict[int, int] = defaultdict(int)
    peak_private: dict[int, int] = defaultdict(int)
    for s in sampler.samples:
        for pid, value in s.rss.items():
            peak[pid] = max(peak[pid], value)
            peak_private[pid] = max(peak_private[pid], s.private[pid])
    by_kind: dict[str, list[int]] = defaultdict(list)
    for pid in peak:
        by_kind[_short(sampler.titles.get(pid, "?"))].append(pid)
    print(f"{'process (pids)':<44}{'peak RSS MiB':>13}{'peak RSS-shared MiB':>21}")
    for kind, pids in sorted(by_kind.items(), key=lambda kv: -max(peak[p] for p in kv[1])):
        top = max(pids, key=lambda p: peak[p])
        print(
            f"{kind + f' ({len(pids)})':<44}{peak[top] / MIB:>13.0f}"
            f"{max(peak_private[p] for p in pids) / MIB:>21.0f}"
        )
    print(
        f"{'clip window':<14}{'samples':>8}{'sum RSS MiB min/max':>22}{'sum RSS-shared min/max':>24}"
        f"{'store MiB min/max':>20}"
    )
    windows = []
    for k in range(clips + 1):
        win = [s for s in sampler.samples if s.clips_written == k]
        if not win:
            continue
        total = [sum(s.rss.values()) / MIB for s in win]
        priv = [sum(s.private.values()) / MIB for s in win]
        store = [s.store_used / MIB for s in win if s.store_used >= 0] or [float("nan")]
        label = f"clip {k + 1}" if k < clips else "after last"
        print(
            f"{label:<14}{len(win):>8}{min(total):>11.0f} /{max(total):>8.0f}"
            f"{min(priv):>13.0f} /{max(priv):>8.0f}{min(store):>11.0f} /{max(store):>6.0f}"
        )
        windows.append(
            {"window": label, "rss_mib": [min(total), max(total)], "private_mib": [min(priv), max(priv)],
             "store_mib": [min(store), max(store)]}
        )  # fmt: skip
    if sampler.store_errors:
        print(f"store stats failed {len(sampler.store_errors)}x, first: {sampler.store_errors[0]}")
    last = sampler.samples[-1] if sampler.samples else None
    spilled = max((s.spilled for s in sampler.samples), default=0)
    restored = max((s.restored for s in sampler.samples), default=0)
    store_peak = max((s.store_used for s in sampler.samples), default=-1)
    print(
        f"object store: peak {store_peak / MIB:.0f} MiB in use; spilled {spilled / MIB:.0f} MiB, "
        f"restored {restored / MIB:.0f} MiB; {len(sampler.samples)} samples over "
        f"{last.t if last else 0:.0f} s"
    )
    return {
        "peak_rss_mib": {k: max(peak[p] for p in v) / MIB for k, v in by_kind.items()},
        "windows": windows,
        "store_peak_mib": store_peak / MIB,
        "spilled_mib": spilled / MIB,
        "restored_mib": restored / MIB,
    }


def start_ray(attempts: int = 4, **kwargs) -> None:
    """ray.init, retried: on a loaded machine a raylet can miss Ray's fixed 30 s start window."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(**kwargs)
            return
        except Exception as error:  # "The current node timed out during startup"
            ray.shutdown()
            if attempt == attempts - 1:
                raise
            print(f"ray.init failed ({error}); retrying")


def run_measured_in_process(
    npz: str, raw: str, output: str, config_dict: dict, args: argparse.Namespace
) -> dict:
    """The same stages one after another in this process, no Ray (`run_in_process`): the
    models' own memory and time, with no cluster to lose."""
    from s4d_ray.engine.clip_stages import input_rows
    from s4d_ray.engine.runner import run_in_process

    sampler = Sampler(os.path.join(output, "npz"), args.interval, store=False)
    sampler.start()
    t0 = time.perf_counter()
    try:
        summaries = run_in_process(input_rows(npz, raw)[0], config_from_dict(config_dict), output)
    finally:
        sampler.halt.set()
        sampler.join()
    wall = time.perf_counter() - t0
    done = [s for s in summaries if s["status"] == "done"]
    for s in summaries:
        if s["status"] != "done":
            print(f"  failed {s['clip_id']} in {s['error_stage']}: {s['error_message'][:300]}")
    # a failed clip (random weights can leave the optimiser nothing) still timed its stages
    seconds = json.loads(summaries[0].get("timings") or "{}") if summaries else {}
    print(f"clips done {len(done)}/{len(summaries)} in process, wall {wall:.0f} s")
    print("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    figures = report(sampler, len(summaries))
    figures.update(clips_done=len(done), wall_s=wall, stage_seconds_per_clip=seconds)
    return figures


def run_measured(
    npz: str,
    raw: str,
    output: str,
    config_dict: dict,
    args: argparse.Namespace,
    clips: int,
    in_process: bool = False,
) -> dict:
    """One run_pipeline on a fresh local Ray cluster, sampled; prints and returns the figures."""
    import ray

    from s4d_ray.engine.pipeline import run_pipeline

    if in_process:
        return run_measured_in_process(npz, raw, output, config_dict, args)
    start_ray(
        num_cpus=args.num_cpus,
        object_store_memory=int(args.object_store_gib * 1024**3),
        include_dashboard=False,
    )
    sampler = Sampler(os.path.join(output, "npz"), args.interval)
    sampler.start()
    t0 = time.perf_counter()
    try:
        summary = run_pipeline(npz, output, config_from_dict(config_dict), videos=raw)
    finally:
        sampler.halt.set()
        sampler.join()
        ray.shutdown()
    wall = time.perf_counter() - t0
    print(
        f"clips done {summary.clips_done}/{clips}, failed {summary.clips_failed} "
        f"{summary.failures_by_stage}, wall {wall:.0f} s"
    )
    if summary.clips_failed:
        failures = os.path.join(output, "failures", "failures-all.parquet")
        if os.path.exists(failures):
            import pyarrow.parquet as pq

            for row in pq.read_table(failures).to_pylist():
                print(
                    f"  failed {row['clip_id']} in {row['stage']}: {row['error_type']}: {row['message'][:300]}"
                )
    print(
        "seconds per stage per clip: "
        + ", ".join(f"{k} {v:.1f}" for k, v in summary.stage_seconds_per_clip.items())
    )
    figures = report(sampler, clips)
    figures.update(
        clips_done=summary.clips_done, clips_failed=summary.clips_failed, wall_s=wall,
        stage_seconds_per_clip=summary.stage_seconds_per_clip,
    )  # fmt: skip
    return figures


def neural_checkpoints(folder: str) -> dict:
    """Full-size random-weight checkpoints in the official formats; returns the models config."""
    import torch
    from safetensors.torch import save_model

    from s4d_ray.models.deeplab import DeepLabConfig, DeepLabV3Plus, save_converted
    from s4d_ray.models.sea_raft import SEARAFT, SPRING_M_CONFIG
    from s4d_ray.models.tapir import TAPIR

    torch.manual_seed(0)
    raft, tapir = (
        os.path.join(folder, "model.safetensors"),
        os.path.join(folder, "bootstapir_checkpoint_v2.pt"),
    )
    deeplab = os.path.join(folder, "deeplab.safetensors")
    save_model(SEARAFT(SPRING_M_CONFIG), raft)
    torch.save(TAPIR().state_dict(), tapir)
    config = DeepLabConfig()  # output stride 8, as released
    save_converted(DeepLabV3Plus(config).state_dict(), config, deeplab)
    return {"stereo": raft, "tracking": tapir, "segmentation": deeplab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument(
        "--height", type=int, default=384, help="equirect eye height of the synth video"
    )
    parser.add_argument("--object-store-gib", type=float, default=4.0)
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="sampling period, s")
    parser.add_argument("--neural-frames", type=int, default=4)
    parser.add_argument("--neural-query-stride", type=int, default=32)
    parser.add_argument(
        "--neural-in-process",
        action="store_true",
        help="run the neural clip through `run_in_process` (no Ray)",
    )
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-neural", action="store_true")
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args()
    warnings.simplefilter("ignore", LowResolutionWarning)
    figures: dict = {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="s4dfull") as root:
        data = os.path.join(root, "data")
        source = render_long_clip(data, args.frames, args.height)
        if not args.skip_cpu:
            npz = os.path.join(root, "cpu_npz")
            os.makedirs(npz)
            names = [source] + [copy_clip(data, source, i) for i in range(1, args.clips)]
            for name in names:
                os.link(os.path.join(data, "npz", f"{name}.npz"), os.path.join(npz, f"{name}.npz"))
            print(
                f"== cpu backends: {args.clips} clips x {args.frames} frames, "
                f"{args.object_store_gib:g} GiB object store, {args.num_cpus} CPUs for Ray, "
                f"{os.cpu_count()} cores"
            )
            cpu = {"stages": {"optimize": {"num_cpus": 1}}, "clips_per_shard": 1}
            figures["cpu"] = run_measured(
                npz, os.path.join(data, "raw"), os.path.join(root, "cpu_out"), cpu, args, args.clips
            )
        if not args.skip_neural:
            npz = os.path.join(root, "neural_npz")
            os.makedirs(npz)
            name = copy_clip(data, source, 9000, frames=args.neural_frames)
            os.link(os.path.join(data, "npz", f"{name}.npz"), os.path.join(npz, f"{name}.npz"))
            weights = neural_checkpoints(root)
            # the neural defaults (2-CPU decode and optimiser, 1 CPU per model actor) are sized
            # for GPU nodes and do not fit this cluster at once (the preflight says so)
            no_gpu = {"num_gpus": 0.0, "num_cpus": 0.5, "max_actors": 1}
            neural = {
                "backend": "neural",
                "min_tracks": 0,  # random weights track nothing consistent; memory/time is measured
                "stages": {s: dict(no_gpu) for s in ("stereo", "tracking", "segmentation")}
                | {"decode": {"num_cpus": 1.0}, "optimize": {"num_cpus": 0.5}},
                "models": {
                    "stereo": {"weights_uri": weights["stereo"]},
                    "tracking": {
                        "weights_uri": weights["tracking"],
                        "query_stride": args.neural_query_stride,
                    },
                    "segmentation": {"weights_uri": weights["segmentation"]},
                },
            }
            print(
                f"== neural backend on CPU, full-size random-weight models: 1 clip x "
                f"{args.neural_frames} frames, query stride {args.neural_query_stride}"
            )
            figures["neural"] = run_measured(
                npz,
                os.path.join(data, "raw"),
                os.path.join(root, "neural_out"),
                neural,
                args,
                1,
                in_process=args.neural_in_process,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2, default=float)


if __name__ == "__main__":
    main()
