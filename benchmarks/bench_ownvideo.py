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
from dataclasses import dataclass, replace
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


def pose_view_labels(ground_truth: dict, size: int, hfov_deg: float) -> np.ndarray:
    """Oracle segmentation: the synthetic scene's ADE20K labels [T,S,S] uint8 in a size²,
    hfov_deg view of the left camera at each clip frame (the true rectified frame; ours
    differs from it by the calibration's few thousandths of a degree) — what a perfect
    DeepLab would give the pose view."""
    from s4d_ray.geometry.camera import perspective_rays
    from s4d_ray.synthetic.synth import scene_of

    scene = scene_of(ground_truth)
    rays = perspective_rays(size, size, hfov_deg).reshape(-1, 3)
    out = []
    for t in ground_truth["clip_times"]:
        c2w = scene.camera2world(float(t))
        hits = scene.cast(c2w[:, 3], rays @ c2w[:, :3].T, float(t))
        out.append(scene.labels_of(hits).reshape(size, size))
    return np.stack(out)


def pose_figures(camera2world: np.ndarray, gt: np.ndarray) -> dict:
    """ATE after SE(3) and Sim(3) (m), scale error, rotation error (deg), RPE."""
    se3, sim3 = ate_se3(camera2world, gt), ate_sim3(camera2world, gt)
    rel = rpe(camera2world, gt)
    return {
        "ate_se3_m": round(se3.rmse, 5),
        "ate_sim3_m": round(sim3.rmse, 5),
        "scale_error": round(sim3.scale_error, 5),
        "rotation_error_deg": round(se3.rotation_deg, 4),
        "rpe_translation_m": round(rel.translation_rmse, 5),
        "rpe_rotation_deg": round(rel.rotation_rmse_deg, 4),
    }


def bench_clip(
    root: Path,
    truth_npz: Path,
    min_clip_frames: int,
    tracks: bool = False,
    oracle_labels: bool = False,
) -> dict:
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
    pose_config = replace(own.poses, hfov_deg=own.pose_view_hfov_deg)
    with Timer() as t:
        poses = estimate_poses(*wide, truth.name, config=pose_config)
    if oracle_labels:
        labels = pose_view_labels(ground_truth, own.pose_view_px, own.pose_view_hfov_deg)
        try:
            masked = estimate_poses(*wide, truth.name, labels=labels, config=pose_config)
            out["poses_oracle_labels"] = pose_figures(masked.camera2world, truth.camera2world)
        except StageError as error:
            out["poses_oracle_labels"] = {"failed": error.message[:300]}
    del wide
    left, _ = rectify_clip(template, video)  # the pipeline's view, for the tracking stage
    gt = truth.camera2world
    out["poses"] = {
        **t.figures(),
        **pose_figures(poses.camera2world, gt),
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


LARGE_SIZES = {"5k": (2880, 5760), "8k": (4096, 8192)}
"""VR180 frames (H, W): two 2880² (5.7K) or 4096² (8K) equirect eyes side by side."""


@dataclass(frozen=True)
class LargeVideo:
    """The large video a run measures: its size (a `LARGE_SIZES` key), length, shots, rate."""

    size: str
    seconds: float
    shots: int
    fps: float

    @property
    def video_id(self) -> str:
        return f"large{self.size}"

    @property
    def hw(self) -> tuple[int, int]:
        return LARGE_SIZES[self.size]


def render_large_video(out: Path, large: LargeVideo, seed: int) -> str:
    """A side-by-side video of `large.shots` streets (cut between them): each frame rendered
    at 360-line eyes and resampled exactly to the large size (the equirect
    geometry is unchanged; only the texture is soft), encoded ultrafast with a keyframe every
    second (as YouTube's files have). Its URI."""
    small = SynthConfig(height=360)
    fmt, small_hw = synth_format(small)
    # an equirect eye maps [0, w-1] onto its bounds: big pixel u is small pixel u·(w_s-1)/(w_b-1)
    hw, fps = large.hw, large.fps
    eye_small, eye_big = small_hw[1] // 2, hw[1] // 2
    ratio = (eye_small - 1) / (eye_big - 1)
    u = np.arange(hw[1]) % eye_big * ratio + (np.arange(hw[1]) >= eye_big) * eye_small
    v = np.arange(hw[0]) * (small_hw[0] - 1) / (hw[0] - 1)
    map_x = np.broadcast_to(u[None, :], hw).astype(np.float32)
    map_y = np.broadcast_to(v[:, None], hw).astype(np.float32)
    per_shot = int(round(large.seconds * fps / large.shots))
    scenes = [build_scene(np.random.default_rng([seed, shot]), 4) for shot in range(large.shots)]
    for scene in scenes[1:]:  # one camera: one rig in every shot
        scene.rectified2rig = scenes[0].rectified2rig

    def frames():
        for index in range(per_shot * large.shots):
            scene, t = scenes[index // per_shot], (index % per_shot) / fps
            image = render_stereo_frame(scene, t, fmt, small_hw)
            yield cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR)

    uri = str(out / "raw" / f"{large.video_id}.mp4")
    write_video(uri, frames(), fps=fps, preset="ultrafast", keyframe_interval=int(round(fps)))
    return uri


def _prepare_in_child(uri: str, video_id: str, output: str, threads: int, queue) -> None:
    import resource

    from s4d_ray.io.video import decode_threads

    start = time.perf_counter()
    with decode_threads(threads):
        outcome = prepare_video(uri, video_id, output)
    queue.put(
        {
            "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "clips": len(outcome.npz_uris),
            "failures": [f"{f.clip_id} {f.stage}: {f.message[:120]}" for f in outcome.failures],
            "figures": {k: v for k, v in outcome.figures.items() if k != "video_format"},
        }
    )


def bench_large(out: Path, large: LargeVideo, seed: int, threads: int) -> dict:
    """One large video prepared in a fresh process (as a Ray task would be, FFmpeg decoding
    with `threads`; clips posed in the pass): seconds per step, decodes, its peak resident
    memory, and when its first clip's npz was written."""
    import multiprocessing

    video = out / "raw" / f"{large.video_id}.mp4"
    with Timer() as t:
        uri = str(video) if video.exists() else render_large_video(out, large, seed)
    output = out / "prepared"
    shutil.rmtree(output, ignore_errors=True)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.time()
    child = context.Process(
        target=_prepare_in_child, args=(uri, large.video_id, str(output), threads, queue)
    )
    child.start()
    result = queue.get()
    child.join()
    written = sorted(p.stat().st_mtime for p in (output / "ownvideo" / "npz").glob("*.npz"))
    stored = output / "calibration" / f"{large.video_id}.json"
    rig_error = None
    if stored.exists():
        rig = build_scene(np.random.default_rng([seed, 0]), 4).rectified2rig  # every shot's rig
        estimate = Calibration.from_json(stored.read_text()).rectified2rig
        rig_error = round(relative_eye_rotation_error_deg(estimate, rig), 5)
    return {
        "video": {
            "seconds": large.seconds,
            "fps": large.fps,
            "shots": large.shots,
            "size": list(large.hw[::-1]),
            "source_frames": int(round(large.seconds * large.fps / large.shots)) * large.shots,
            "decode_threads": threads,
        },
        "render_s": round(t.wall, 1),
        "first_clip_written_s": round(written[0] - start, 1) if written else None,
        "relative_eye_rotation_error_deg": rig_error,
        **result,
    }


RUN_LABELS = {"read": "ReadOwnVideos", "poses": "Map(poses)"}
"""Ray task names (in their workers' command lines) whose memory the run benchmark samples."""


def _sample_memory(peaks: dict[str, float], stop) -> None:
    """Peak private resident GiB (resident less shared pages: the object store's shared
    memory a worker maps is counted once, in `object_store`, not in every worker that reads
    or writes it) of Ray workers running each task of `RUN_LABELS`, of all Ray processes
    together, and of /dev/shm (the object store), sampled every 0.5 s until `stop` is set."""
    import shutil as disk

    import psutil

    while not stop.is_set():
        total = 0.0
        for process in psutil.process_iter(["cmdline", "memory_info"]):
            line = " ".join(process.info["cmdline"] or [])
            memory = process.info["memory_info"]
            if "ray" not in line or memory is None:
                continue
            private = (memory.rss - memory.shared) / 2**30
            total += private
            for label, name in RUN_LABELS.items():
                if name in line:
                    peaks[label] = max(peaks.get(label, 0.0), private)
        peaks["all_ray_processes"] = max(peaks.get("all_ray_processes", 0.0), total)
        shm = disk.disk_usage("/dev/shm").used / 2**30
        peaks["object_store"] = max(peaks.get("object_store", 0.0), shm)
        stop.wait(0.5)


def bench_large_run(out: Path, uri: str, video_id: str, config: str = "") -> dict:
    """The whole job on the video at `uri` (`s4d run --videos`, a local Ray cluster, CPU
    backends) in a subprocess: when its first clip's final npz and Parquet shard were written
    against when the pass cut the video's last shot (the cut list's last write), the pass's
    figures and decode counts (its outcome), seconds per clip per stage (summary.json), and
    peak memory of its read task and pose tasks. `config`: the job's --config file, if any
    (e.g. one clip per optimiser call and per shard, so the first clip is written alone)."""
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
    command += ["--output", str(output), *(["--config", config] if config else [])]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.time() - start
    stop.set()
    sampler.join()
    if result.returncode != 0:
        raise RuntimeError(f"s4d run failed: {result.stderr[-3000:]}")
    npz = sorted(p.stat().st_mtime for p in (output / "npz").glob("*.npz"))
    shards = sorted(p.stat().st_mtime for p in (output / "parquet").rglob("*.parquet"))
    last_cut = (output / "ownvideo" / "cuts" / f"{video_id}.json").stat().st_mtime
    outcome = json.loads((output / "ownvideo" / "videos" / f"{video_id}.json").read_text())
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
    """PROJECTION (not measured): a `minutes`-long video of the measured size and rate. Its
    pass is one task on one node, at the source frames/s of the pass measured in a process of
    its own (its posing taken out: in a run clips are posed in tasks of their own); its
    clips (200 frames at 30 fps) are posed and run through the CPU backends in tasks on any
    node, at the measured core-seconds per frame; a node has 16 cores."""
    fps = large["video"]["fps"]
    figures = large["figures"]
    clip_seconds = figures["clip_seconds"].values()
    posing = sum(c["poses"] for c in clip_seconds)
    decoded = figures["decodes"]["pass"]["decoded"]
    source_fps = decoded / (figures["pass_seconds"] - figures["calibration_ready_seconds"] - posing)
    kept = sum(1 for _ in clip_seconds)  # clips of the measured video
    kept_frames = large["video"]["seconds"] * min(fps, 30)
    pose_per_frame = sum(c["poses"] for c in clip_seconds) / kept_frames
    clips = math.ceil(minutes * 60 * min(fps, 30) / 200)
    pass_s = figures["calibration_ready_seconds"] + minutes * 60 * fps / source_fps
    per_clip = 200 * pose_per_frame
    out = {
        "NOTE": "PROJECTION from this machine's per-core figures, not a measurement",
        "video_minutes": minutes,
        "clips": clips,
        "measured_source_frames_per_s": round(source_fps, 1),
        "measured_pose_s_per_200_frame_clip": round(per_clip, 1),
        "measured_clips": kept,
        "pass_s": round(pass_s),
    }
    if run is not None:
        stages = run["stage_seconds_per_clip"]
        frames_per_clip = kept_frames / max(run["clips_done"], 1)
        pipeline = sum(v for k, v in stages.items() if k not in ("decode", "poses"))
        per_clip += 200 * pipeline / frames_per_clip
        out["measured_pipeline_s_per_200_frame_clip_cpu_backends"] = round(
            200 * pipeline / frames_per_clip, 1
        )
        read = run["pass"]
        out["run_read_task_source_frames_per_s_sharing_2_cores"] = round(
            read["decodes"]["pass"]["decoded"]
            / (read["pass_seconds"] - read["calibration_ready_seconds"]),
            1,
        )
    for nodes in (1, 8):
        cores = 16 * nodes - 1  # one holds the pass
        # the clips keep pace with the pass, or the cores are the bound; then the last clip
        out[f"{nodes}_node{'s' if nodes > 1 else ''}_s"] = round(
            max(pass_s, clips * per_clip / cores) + per_clip
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
        "--oracle-labels",
        action="store_true",
        help="also pose each clip with the scene's true segmentation labels in the pose view "
        "(a perfect DeepLab) and report both",
    )
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
        help="instead: one 5760x2880 (or 8K) video this long (--large-shots streets at "
        "--large-fps), prepared in a fresh process: seconds per step, decodes, peak memory, "
        "first clip written",
    )
    parser.add_argument("--large-shots", type=int, default=3)
    parser.add_argument("--large-size", choices=sorted(LARGE_SIZES), default="5k")
    parser.add_argument(
        "--large-threads", type=int, default=1, help="FFmpeg threads of the prepared video"
    )
    parser.add_argument(
        "--large-run",
        action="store_true",
        help="with --large-seconds: also run the whole job on the video (local Ray)",
    )
    parser.add_argument("--run-config", default="", help="the --large-run job's --config file")
    parser.add_argument("--large-fps", type=float, default=60.0)
    args = parser.parse_args()
    warnings.simplefilter("ignore", LowResolutionWarning)
    root = Path(args.out)
    if args.large_seconds > 0:
        large = LargeVideo(args.large_size, args.large_seconds, args.large_shots, args.large_fps)
        figures = bench_large(root, large, args.seed, args.large_threads)
        print(json.dumps(figures, indent=1), flush=True)
        uri = str(root / "raw" / f"{large.video_id}.mp4")
        run = (
            bench_large_run(root, uri, large.video_id, args.run_config) if args.large_run else None
        )
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
            result = bench_clip(root, npz, min(32, args.frames), args.tracks, args.oracle_labels)
        except StageError as error:  # a refused clip is a figure of the sweep, not its end
            print(json.dumps({"clip": npz.stem, "failed": error.stage, "message": error.message}))
            continue
        print(json.dumps(result))
        results.append(result)
    keys = ("split", "calibration", "poses", "tracking_stage")
    print("\nseconds per clip (CPU):", {k: np.mean([r[k]["cpu_s"] for r in results]) for k in keys})


if __name__ == "__main__":
    main()
