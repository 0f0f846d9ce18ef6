"""`make demo`: the main job on the embedded default — local Ray, CPU backends, synthetic VR180.

1. renders synthetic VR180 clips with ground truth (`s4d synth`),
2. runs the whole pipeline on them on a local Ray cluster with the CPU backends,
3. prints the run summary and the accuracy against ground truth (median 3D track error in cm,
   fraction of tracks kept),
4. saves a picture: a rectified frame with the output 3D tracks projected into it.

Errors are medians over stored track points against the exact synthetic trajectories; far
static points dominate them (stereo depth error grows with distance²), so the relative depth
error is printed too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
import warnings

import cv2
import numpy as np

from s4d_ray.engine.config import PipelineConfig
from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, intrinsics, project_points
from s4d_ray.geometry.rectify import LowResolutionWarning, iter_rectified
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, read_clip
from s4d_ray.synthetic.evaluate import evaluate_clip
from s4d_ray.synthetic.synth import SynthConfig, load_ground_truth, synth_dataset


def draw_tracks(image: np.ndarray, record: ClipRecord, frame: int, trail: int = 8) -> np.ndarray:
    """`image [S,S,3]` with the clip's 3D tracks projected at `frame`, coloured by depth
    (near = red, far = blue), each with a trail over its previous `trail` frames."""
    out = image.copy()
    dense = record.dense_tracks()
    w2c = record.world2camera()[frame]
    k = intrinsics(image.shape[1], image.shape[0], RECTIFIED_HFOV_DEG)
    here = np.isfinite(dense[:, frame, 0])
    px, z = project_points(dense[here, frame], w2c, k)
    colours = cv2.applyColorMap(
        np.clip(255 - 255 * (z - 1.0) / 15.0, 0, 255).astype(np.uint8)[:, None], cv2.COLORMAP_JET
    )[:, 0, ::-1]
    history = dense[here, max(0, frame - trail) : frame + 1]
    for points, colour in zip(history, colours, strict=True):
        ok = np.isfinite(points[:, 0])
        if ok.sum() >= 2:
            trail_px, _ = project_points(points[ok], w2c, k)
            cv2.polylines(
                out,
                [trail_px.astype(np.int32)],
                False,
                tuple(int(c) for c in colour),
                1,
                cv2.LINE_AA,
            )
    for (x, y), colour in zip(px, colours, strict=True):
        cv2.circle(out, (int(x), int(y)), 2, tuple(int(c) for c in colour), -1, cv2.LINE_AA)
    return out


def save_picture(data: str, output: str, clip_id: str) -> str:
    """`<output>/preview_<clip>.png`: the rectified left frame mid-clip with the 3D tracks."""
    record = read_clip(fs.join(output, "npz", f"{clip_id}.npz"))
    source = read_clip(fs.join(data, "npz", f"{clip_id}.npz"))
    frame = record.num_frames // 2
    rectified = iter_rectified(source, fs.join(data, "raw", f"{source.video_id}.mp4"))
    left, _ = next(itertools.islice(rectified, frame, None))  # decodes no further than `frame`
    panel = np.concatenate([left, draw_tracks(left, record, frame)], axis=1)
    ok, png = cv2.imencode(".png", panel[..., ::-1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    path = fs.join(output, f"preview_{clip_id}.png")
    fs.write_bytes(path, png.tobytes())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="folder for data/ and output/")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument(
        "--height", type=int, default=1024, help="synthetic equirect height per eye, px"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    warnings.simplefilter("ignore", LowResolutionWarning)
    data, output = fs.join(args.out, "data"), fs.join(args.out, "output")

    t0 = time.perf_counter()
    clip_ids = synth_dataset(
        data, SynthConfig(clips=args.clips, frames=args.frames, height=args.height)
    )
    print(f"synth: {len(clip_ids)} clips in {time.perf_counter() - t0:.1f} s -> {data}")

    from s4d_ray.engine.pipeline import run_pipeline

    summary = run_pipeline(
        fs.join(data, "npz"), output, PipelineConfig(), videos=fs.join(data, "raw")
    )
    printable = {k: v for k, v in summary.__dict__.items() if k != "config"}
    print("summary:", json.dumps(printable, indent=2, sort_keys=True))

    print(
        f"\n{'clip':<22}{'tracks':>8}{'kept':>7}{'3D err cm':>11}{'static':>9}{'moving':>9}"
        f"{'depth err':>11}"
    )
    for clip_id in clip_ids:
        npz = fs.join(output, "npz", f"{clip_id}.npz")
        if not fs.exists(npz):
            print(f"{clip_id:<22} failed (see {output}/failures)")
            continue
        scores = evaluate_clip(read_clip(npz), load_ground_truth(data, clip_id))
        print(
            f"{clip_id:<22}{scores['tracks']:>8}{scores['fraction_kept']:>7.2f}"
            f"{scores['median_error_cm']:>11.1f}{scores['median_error_static_cm']:>9.1f}"
            f"{scores['median_error_moving_cm']:>9.1f}"
            f"{scores['median_relative_depth_error']:>10.1%}"
        )
    done = [c for c in clip_ids if fs.exists(fs.join(output, "npz", f"{c}.npz"))]
    if done:
        print(f"\npicture: {save_picture(data, output, done[0])}")
    print(f"outputs: {output}/npz, {output}/parquet, {output}/summary.json")
    return 0 if done else 1


if __name__ == "__main__":
    raise SystemExit(main())
