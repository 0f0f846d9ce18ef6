"""Own-video steps per clip — clip splitting, rig calibration, poses — against the tracking stage.

On `s4d synth` videos (known rig miscalibration and camera trajectory; the npz is used only as
ground truth): seconds per clip (wall and CPU) of splitting, calibration and poses next to the
CPU tracking stage (`Tracker('cpu')`, Lucas–Kanade) on the same rectified clip, and the
accuracy figures: relative eye-rotation error, median vertical disparity after calibration
(and with the true rig, the matcher's floor), ATE after SE(3) and Sim(3), scale error, RPE.

    python -m benchmarks.bench_ownvideo [--out DIR] [--clips 2] [--frames 40] [--height 1024]
        [--tracks]   # + 3D track error of the whole pipeline with GT poses vs ours
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from s4d_ray.errors import StageError
from s4d_ray.geometry.pose_metrics import ate_se3, ate_sim3, relative_eye_rotation_error_deg, rpe
from s4d_ray.geometry.rectify import LowResolutionWarning
from s4d_ray.io.clip_io import read_clip
from s4d_ray.io.rectify import rectify_clip
from s4d_ray.io.stereo_format import StereoFormat
from s4d_ray.io.video import decode_frames_at
from s4d_ray.ownvideo.calibration import (
    CalibrationConfig,
    calibrate_frames,
    sample_timestamps,
    vertical_disparity_px,
)
from s4d_ray.ownvideo.clips import ClipConfig, split_video
from s4d_ray.ownvideo.poses import estimate_poses
from s4d_ray.ownvideo.prepare import clip_record
from s4d_ray.stages.tracking import Tracker
from s4d_ray.synthetic.synth import SynthConfig, synth_dataset


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
    from s4d_ray.synthetic.synth import load_ground_truth

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
    with Timer() as t:
        clips, _ = split_video(video, truth.video_id, ClipConfig(min_clip_frames=min_clip_frames))
    out["split"] = {**t.figures(), "clips": len(clips)}
    with Timer() as t:
        wanted = sample_timestamps(clips[0].timestamps, CalibrationConfig().frames)
        frames = list(decode_frames_at(video, wanted))
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
    left, right = rectify_clip(template, video)
    with Timer() as t:
        poses = estimate_poses(left, right, truth.name)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_ownvideo", help="synthetic data folder")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--height", type=int, default=1024, help="equirect eye height, px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tracks",
        action="store_true",
        help="also run the whole pipeline (CPU backends) on the GT npz and on our posed clip "
        "and compare their 3D track errors against ground truth",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", LowResolutionWarning)
    root = Path(args.out)
    if not (root / "npz").exists():
        synth_dataset(
            str(root),
            SynthConfig(clips=args.clips, frames=args.frames, height=args.height, seed=args.seed),
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
