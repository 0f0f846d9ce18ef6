"""Own-video steps per clip — clip splitting, rig calibration, poses — against the tracking stage.

On `s4d synth` videos (known rig miscalibration and camera trajectory; the npz is used only as
ground truth): seconds per clip (wall and CPU) of splitting, calibration and poses next to the
CPU tracking stage (`Tracker('cpu')`, Lucas–Kanade) on the same rectified clip, and the
accuracy figures: relative eye-rotation error, median vertical disparity after calibration
(and with the true rig, the matcher's floor), ATE after SE(3) and Sim(3), scale error, RPE.

    python -m benchmarks.bench_ownvideo [--out DIR] [--clips 2] [--frames 40] [--height 1024]
        [--tracks]   # + 3D track error of the whole pipeline with GT poses vs ours
        [--camera-speed M/S] [--mover-scale K] [--depth-scale K]   # the streets' shape
    python -m benchmarks.bench_ownvideo --out DIR --large-seconds 60 [--large-shots 3]
        [--large-run]   # one 5760x2880 60 fps video prepared in a fresh process: decodes,
                        # peak memory, seconds; with --large-run also the whole job on it
                        # (`s4d run --videos`): first clip written vs last shot cut, peak
                        # memory of its read task and pose tasks, seconds per clip per stage,
                        # and the projection for a 10-minute video
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from s4d_ray.errors import StageError
from s4d_ray.geometry.pose_metrics import ate_se3, ate_sim3, relative_eye_rotation_error_deg, rpe
from s4d_ray.geometry.rectify import LowResolutionWarning
from s4d_ray.io.clip_io import read_clip
from s4d_ray.io.rectify import rectify_clip
from s4d_ray.io.stereo_format import StereoFormat
from s4d_ray.io.video import sample_frames, write_video
from s4d_ray.ownvideo.calibration import (
    Calibration,
    CalibrationConfig,
    calibrate_frames,
    vertical_disparity_px,
)
from s4d_ray.ownvideo.clips import ClipConfig, split_video
from s4d_ray.ownvideo.poses import estimate_poses
from s4d_ray.ownvideo.prepare import OwnVideoConfig, clip_record, prepare_video
from s4d_ray.stages.tracking import Tracker
from s4d_ray.synthetic.synth import (
    SceneShape,
    SynthConfig,
    build_scene,
    load_ground_truth,
    render_stereo_frame,
    synth_dataset,
    synth_format,
)


class Timer:
    """Wall and process-CPU seconds of a block (CPU time is what a busy machine distorts least)."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def figures(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 2), "cpu_s": round(self.cpu, 2)}


def aligned_to_truth(record, truth, rig_truth: np.ndarray):
    """Our record (world = first rectified left camera of *our* rig) in the truth's world and
    camera frames: our rectified frame differs from the true one by the calibration gauge
    G = R_trueᵀ·R_ours (left eye), and our world is our first camera."""
    gauge = np.eye(4)
    gauge[:3, :3] = rig_truth[0].T @ record.rectified2rig[0].astype(np.float64)
    first = np.eye(4)
    first[:3] = truth.camera2world[0]
    world = first @ gauge
    c2w = np.tile(np.eye(4), (record.num_frames, 1, 1))
    c2w[:, :3] = record.camera2world
    record.camera2world = (world @ c2w @ gauge.T)[:, :3].astype(np.float32)
    coords = record.track_coordinates.astype(np.float64)
    record.track_coordinates = (coords @ world[:3, :3].T + world[:3, 3]).astype(np.float32)
    return record


def track_accuracy(root: Path, truth_npz: Path, ours, work: Path) -> dict:
    """3D track error (cm) vs ground truth of the whole pipeline (CPU backends, in process) run
    on the release-style GT npz and on our posed clip (same frames), side by side."""
    from s4d_ray.engine.clip_stages import input_rows
    from s4d_ray.engine.config import PipelineConfig
    from s4d_ray.engine.runner import run_in_process
    from s4d_ray.io.clip_io import write_clip
    from s4d_ray.synthetic.evaluate import evaluate_clip

    truth = read_clip(str(truth_npz))
    ground_truth = load_ground_truth(str(root), truth.name)
    out = {}
    for name, record in (("with_gt_npz", truth), ("own_video", ours)):
        folder = work / name
        write_clip(record, str(folder / "npz" / f"{truth.name}.npz"))
        rows, _ = input_rows(str(folder / "npz"), str(root / "raw"))
        with Timer() as t:
            run_in_process(rows, PipelineConfig(), str(folder / "out"))
        result = read_clip(str(folder / "out" / "npz" / f"{truth.name}.npz"))
        if name == "own_video":
            result = aligned_to_truth(result, truth, truth.rectified2rig.astype(np.float64))
        scores = evaluate_clip(result, ground_truth)
        out[name] = {
            "pipeline_wall_s": round(t.wall, 1),
            **{k: round(v, 3) for k, v in scores.items() if isinstance(v, float)},
            "tracks": scores["tracks"],
        }
    return out


def bench_clip(root: Path, truth_npz: Path, min_clip_frames: int, tracks: bool = False) -> dict:
    truth = read_clip(str(truth_npz))
    video = str(root / "raw" / f"{truth.video_id}.mp4")
    out: dict = {"clip": truth.name, "frames": truth.num_frames}
    ground_truth = load_ground_truth(str(root), truth.name)
    depth = ground_truth["depth"]
    out["scene"] = {
        "moving_fraction": round(float(np.mean(ground_truth["object_ids"] > 0)), 3),
        "beyond_10m_fraction": round(float(np.mean((depth > 10) | (depth == 0))), 3),
    }
    with Timer() as t:
        clips, _ = split_video(video, truth.video_id, ClipConfig(min_clip_frames=min_clip_frames))
    out["split"] = {**t.figures(), "clips": len(clips)}
    with Timer() as t:
        frames, _ = sample_frames(video, CalibrationConfig().frames, truth.video_id)
        calibration = calibrate_frames(frames, truth.video_id)
    rig_truth = truth.rectified2rig.astype(np.float64)
    floor = vertical_disparity_px(
        frames, rig_truth, StereoFormat.from_json_dict(calibration.video_format)
    )
    out["calibration"] = {
        **t.figures(),
        "relative_eye_rotation_error_deg": round(
            relative_eye_rotation_error_deg(calibration.rectified2rig, rig_truth), 5
        ),
        "median_vertical_px_before": round(calibration.before_px, 3),
        "median_vertical_px_after": round(calibration.median_vertical_px, 3),
        "median_vertical_px_true_rig": round(float(np.median(floor)), 3),
        "matches": calibration.matches,
    }
    # the ground-truth clip's frames, rectified with the estimated rig
    template = clip_record(
        truth.name,
        truth.video_id,
        truth.timestamps,
        truth.camera2world,
        calibration.rectified2rig,
        calibration.fov_bounds,
    )
    own = OwnVideoConfig()
    wide = rectify_clip(template, video, own.pose_view_px, own.pose_view_hfov_deg, grey=True)
    with Timer() as t:
        poses = estimate_poses(
            *wide, truth.name, config=replace(own.poses, hfov_deg=own.pose_view_hfov_deg)
        )
    del wide
    left, _ = rectify_clip(template, video)  # the pipeline's view, for the tracking stage
    gt = truth.camera2world
    se3, sim3 = ate_se3(poses.camera2world, gt), ate_sim3(poses.camera2world, gt)
    rel = rpe(poses.camera2world, gt)
    out["poses"] = {
        **t.figures(),
        "ate_se3_m": round(se3.rmse, 5),
        "ate_sim3_m": round(sim3.rmse, 5),
        "scale_error": round(sim3.scale_error, 5),
        "rotation_error_deg": round(se3.rotation_deg, 4),
        "rpe_translation_m": round(rel.translation_rmse, 5),
        "rpe_rotation_deg": round(rel.rotation_rmse_deg, 4),
        "path_length_m": round(
            float(np.linalg.norm(np.diff(gt[:, :, 3], axis=0), axis=1).sum()), 3
        ),
        "points": poses.num_points,
        "rms_px": round(poses.rms_px, 3),
        "steps_s": {k: round(v, 2) for k, v in poses.seconds.items()},
    }
    with Timer() as t:
        tracked = Tracker("cpu")(left)
    out["tracking_stage"] = {**t.figures(), "tracks": int(tracked.tracks.shape[0])}
    if tracks:
        ours = clip_record(
            truth.name,
            truth.video_id,
            truth.timestamps,
            poses.camera2world,
            calibration.rectified2rig,
            calibration.fov_bounds,
        )
        out["tracks_3d"] = track_accuracy(root, truth_npz, ours, root / "bench_work")
    return out


LARGE_HW = (2880, 5760)
"""A 5.7K VR180 frame: two 2880² equirect eyes side by side."""


def render_large_video(out: Path, seconds: float, shots: int, fps: float, seed: int) -> str:
    """A 5760×2880 side-by-side video of `shots` streets (cut between them), `seconds` long at
    `fps`: each frame rendered at 360-line eyes and resampled exactly to 2880 (the equirect
    geometry is unchanged; only the texture is soft), encoded ultrafast with a keyframe every
    second (as YouTube's files have). Its URI."""
    small = SynthConfig(height=360)
    fmt, small_hw = synth_format(small)
    # an equirect eye maps [0, w-1] onto its bounds: big pixel u is small pixel u·(w_s-1)/(w_b-1)
    eye_small, eye_big = small_hw[1] // 2, LARGE_HW[1] // 2
    ratio = (eye_small - 1) / (eye_big - 1)
    u = np.arange(LARGE_HW[1]) % eye_big * ratio + (np.arange(LARGE_HW[1]) >= eye_big) * eye_small
    v = np.arange(LARGE_HW[0]) * (small_hw[0] - 1) / (LARGE_HW[0] - 1)
    map_x = np.broadcast_to(u[None, :], LARGE_HW).astype(np.float32)
    map_y = np.broadcast_to(v[:, None], LARGE_HW).astype(np.float32)
    per_shot = int(round(seconds * fps / shots))
    scenes = [build_scene(np.random.default_rng([seed, shot]), 4) for shot in range(shots)]
    for scene in scenes[1:]:  # one camera: one rig in every shot
        scene.rectified2rig = scenes[0].rectified2rig

    def frames():
        for index in range(per_shot * shots):
            scene, t = scenes[index // per_shot], (index % per_shot) / fps
            image = render_stereo_frame(scene, t, fmt, small_hw)
            yield cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR)

    uri = str(out / "raw" / "large5k.mp4")
    write_video(uri, frames(), fps=fps, preset="ultrafast", keyframe_interval=int(round(fps)))
    return uri


def _prepare_in_child(uri: str, output: str, queue) -> None:
    import resource

    start = time.perf_counter()
    outcome = prepare_video(uri, "large5k", output)
    queue.put(
        {
            "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "clips": len(outcome.npz_uris),
            "failures": [f"{f.clip_id} {f.stage}: {f.message[:120]}" for f in outcome.failures],
            "figures": {k: v for k, v in outcome.figures.items() if k != "video_format"},
        }
    )


def bench_large(out: Path, seconds: float, shots: int, fps: float, seed: int) -> dict:
    """One 5.7K video prepared in a fresh process (as a Ray task would be): seconds per step,
    its peak resident memory, and when its first clip's npz was written."""
    import multiprocessing

    video = out / "raw" / "large5k.mp4"
    with Timer() as t:
        uri = str(video) if video.exists() else render_large_video(out, seconds, shots, fps, seed)
    output = out / "prepared"
    shutil.rmtree(output, ignore_errors=True)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.time()
    child = context.Process(target=_prepare_in_child, args=(uri, str(output), queue))
    child.start()
    result = queue.get()
    child.join()
    written = sorted(p.stat().st_mtime for p in (output / "ownvideo" / "npz").glob("*.npz"))
    stored = output / "calibration" / "large5k.json"
    rig_error = None
    if stored.exists():
        rig = build_scene(np.random.default_rng([seed, 0]), 4).rectified2rig  # every shot's rig
        estimate = Calibration.from_json(stored.read_text()).rectified2rig
        rig_error = round(relative_eye_rotation_error_deg(estimate, rig), 5)
    return {
        "video": {
            "seconds": seconds,
            "fps": fps,
            "shots": shots,
            "size": list(LARGE_HW[::-1]),
            "source_frames": int(round(seconds * fps / shots)) * shots,
        },
        "render_s": round(t.wall, 1),
        "first_clip_written_s": round(written[0] - start, 1) if written else None,
        "relative_eye_rotation_error_deg": rig_error,
        **result,
    }


RUN_LABELS = {"read": "ReadOwnVideos", "poses": "Map(poses)"}
"""Ray task names (in their workers' command lines) whose memory the run benchmark samples."""


def _sample_memory(peaks: dict[str, float], stop) -> None:
    """Peak resident GiB of Ray workers running each task of `RUN_LABELS`, and of all Ray
    processes together, sampled every 0.5 s until `stop` is set."""
    import psutil

    while not stop.is_set():
        total = 0.0
        for process in psutil.process_iter(["cmdline", "memory_info"]):
            line = " ".join(process.info["cmdline"] or [])
            if "ray" not in line or process.info["memory_info"] is None:
                continue
            rss = process.info["memory_info"].rss / 2**30
            total += rss
            for label, name in RUN_LABELS.items():
                if name in line:
                    peaks[label] = max(peaks.get(label, 0.0), rss)
        peaks["all_ray_processes"] = max(peaks.get("all_ray_processes", 0.0), total)
        stop.wait(0.5)


def bench_large_run(out: Path, uri: str) -> dict:
    """The whole job on the video at `uri` (`s4d run --videos`, a local Ray cluster, CPU
    backends) in a subprocess: when its first clip's final npz and Parquet shard were written
    against when the pass cut the video's last shot (the cut list's last write), the pass's
    figures and decode counts (its outcome), seconds per clip per stage (summary.json), and
    peak memory of its read task and pose tasks."""
    import subprocess
    import sys
    import threading

    videos, output = Path(uri).parent, out / "run"
    shutil.rmtree(output, ignore_errors=True)
    peaks: dict[str, float] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(peaks, stop), daemon=True)
    sampler.start()
    start = time.time()
    command = [sys.executable, "-m", "s4d_ray.cli", "run", "--videos", str(videos)]
    result = subprocess.run(
        [*command, "--output", str(output)], capture_output=True, text=True, check=False
    )
    wall = time.time() - start
    stop.set()
    sampler.join()
    if result.returncode != 0:
        raise RuntimeError(f"s4d run failed: {result.stderr[-3000:]}")
    npz = sorted(p.stat().st_mtime for p in (output / "npz").glob("*.npz"))
    shards = sorted(p.stat().st_mtime for p in (output / "parquet").rglob("*.parquet"))
    last_cut = (output / "ownvideo" / "cuts" / "large5k.json").stat().st_mtime
    outcome = json.loads((output / "ownvideo" / "videos" / "large5k.json").read_text())
    summary = json.loads((output / "summary.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "first_npz_written_s": round(npz[0] - start, 1) if npz else None,
        "first_parquet_written_s": round(shards[0] - start, 1) if shards else None,
        "last_shot_cut_s": round(last_cut - start, 1),
        "clips_done": summary["clips_done"],
        "clips_failed": summary["clips_failed"],
        "stage_seconds_per_clip": summary["stage_seconds_per_clip"],
        "peak_rss_gib": {k: round(v, 2) for k, v in peaks.items()},
        "pass": {k: v for k, v in outcome["figures"].items() if k != "clip_seconds"},
    }


def projection(large: dict, run: dict | None, minutes: float = 10.0) -> dict:
    """PROJECTION (not measured): a `minutes`-long 5.7K60 video from the figures measured
    here. Its pass is one task on one node, decoding at the measured source frames/s (one
    decode thread); its clips (200 frames at 30 fps) are posed in tasks of their own on any
    node, at the measured seconds per clip on one core."""
    fps = large["video"]["fps"]
    frames = minutes * 60 * fps
    figures = large["figures"]
    source_fps = figures["decodes"]["pass"]["decoded"] / max(
        figures["pass_seconds"] - figures["calibration_ready_seconds"], 1e-9
    )
    clips = math.ceil(minutes * 60 * min(fps, 30) / 200)
    pose_s = float(np.median([c["poses"] for c in figures["clip_seconds"].values()]))
    pass_s = figures["calibration_ready_seconds"] + frames / source_fps
    out = {
        "NOTE": "projection from this machine's per-core figures, not a measurement",
        "video_minutes": minutes,
        "source_frames": int(frames),
        "clips": clips,
        "pass_s_one_decode_thread": round(pass_s),
        "pose_core_s_total": round(clips * pose_s),
    }
    for nodes in (1, 8):
        cores = 16 * nodes - 1  # one core holds the pass
        out[f"{nodes}_node(s)_poses_done_after_pass_s"] = round(
            max(0.0, clips * pose_s / cores - pass_s) + pose_s
        )
    if run is not None:
        per_clip = sum(
            v for k, v in run["stage_seconds_per_clip"].items() if k not in ("decode", "poses")
        )
        out["pipeline_core_s_per_clip_cpu_backends"] = round(per_clip, 1)
        for nodes in (1, 8):
            out[f"{nodes}_node(s)_pipeline_cpu_backends_s"] = round(
                max(pass_s, clips * (per_clip + pose_s) / (16 * nodes - 1))
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_ownvideo", help="synthetic data folder")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--height", type=int, default=1024, help="equirect eye height, px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--camera-speed", type=float, default=0.0, help="m/s (0: drawn)")
    parser.add_argument("--mover-scale", type=float, default=1.0, help="moving objects' size")
    parser.add_argument("--depth-scale", type=float, default=1.0, help="the street's size")
    parser.add_argument(
        "--tracks",
        action="store_true",
        help="also run the whole pipeline (CPU backends) on the GT npz and on our posed clip "
        "and compare their 3D track errors against ground truth",
    )
    parser.add_argument(
        "--large-seconds",
        type=float,
        default=0.0,
        help="instead: one 5760x2880 video this long (--large-shots streets at --large-fps), "
        "prepared in a fresh process: seconds per step, peak memory, first clip written",
    )
    parser.add_argument("--large-shots", type=int, default=3)
    parser.add_argument(
        "--large-run",
        action="store_true",
        help="with --large-seconds: also run the whole job on the video (local Ray)",
    )
    parser.add_argument("--large-fps", type=float, default=60.0)
    args = parser.parse_args()
    warnings.simplefilter("ignore", LowResolutionWarning)
    root = Path(args.out)
    if args.large_seconds > 0:
        figures = bench_large(root, args.large_seconds, args.large_shots, args.large_fps, args.seed)
        print(json.dumps(figures, indent=1), flush=True)
        run = bench_large_run(root, str(root / "raw" / "large5k.mp4")) if args.large_run else None
        if run is not None:
            print(json.dumps({"run": run}, indent=1), flush=True)
        print(json.dumps({"projection": projection(figures, run)}, indent=1))
        return
    if not (root / "npz").exists():
        synth_dataset(
            str(root),
            SynthConfig(
                clips=args.clips,
                frames=args.frames,
                height=args.height,
                seed=args.seed,
                shape=SceneShape(args.camera_speed, args.mover_scale, args.depth_scale),
            ),
        )
    results = []
    for npz in sorted((root / "npz").glob("*.npz"))[: args.clips]:
        try:
            result = bench_clip(root, npz, min(32, args.frames), args.tracks)
        except StageError as error:  # a refused clip is a figure of the sweep, not its end
            print(json.dumps({"clip": npz.stem, "failed": error.stage, "message": error.message}))
            continue
        print(json.dumps(result))
        results.append(result)
    keys = ("split", "calibration", "poses", "tracking_stage")
    print("\nseconds per clip (CPU):", {k: np.mean([r[k]["cpu_s"] for r in results]) for k in keys})


if __name__ == "__main__":
    main()
