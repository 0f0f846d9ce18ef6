"""`make demo`: the main job on the embedded default — local Ray, CPU backends, synthetic VR180.

1. renders synthetic VR180 clips with ground truth (`s4d synth`),
2. runs the whole pipeline on them on a local Ray cluster with the CPU backends,
3. prints the run summary and the accuracy against ground truth (median 3D track error in cm,
   fraction of tracks kept),
4. prints the accuracy by true depth band (< 2, 2-5, 5-10, 10-20 m) beside the depth error
   that stereo alone implies for a stated disparity error (δz = z²·δd/(f·b)),
5. saves a picture (a rectified frame with the output 3D tracks, a depth colour bar and a
   metric scale), rewrites the run report with the accuracy (output/report.html) and writes a
   Rerun recording of the first clip (output/<clip>.rrd; open with `.venv/bin/rerun`), with
   the frames and depth maps of the run's dense outputs (output/dense/).

Errors are medians over stored track points against the exact synthetic trajectories; far
static points dominate them (stereo depth error grows with distance²), so the relative depth
error is printed too.
"""

from __future__ import annotations

import argparse
import io
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
from s4d_ray.io.video_lookup import find_raw_video
from s4d_ray.synthetic.evaluate import (
    DISPARITY_ERRORS_PX,
    banded_errors,
    concat_point_errors,
    evaluate_clip,
    format_band_table,
    point_errors,
)
from s4d_ray.synthetic.synth import SynthConfig, load_ground_truth, synth_dataset
from s4d_ray.viz.colours import DEPTH_COLORMAP, DEPTH_TICKS_M, depth_colours, depth_norm
from s4d_ray.viz.report import write_report
from s4d_ray.viz.rerun_view import write_recording


def draw_tracks(image: np.ndarray, record: ClipRecord, frame: int, trail: int = 8) -> np.ndarray:
    """`image [S,S,3]` with the clip's 3D tracks projected at `frame`, coloured by depth on the
    shared log scale (`s4d_ray.viz.colours`: 1-20 m, near red, far blue), each with a trail
    over its previous `trail` frames."""
    out = image.copy()
    dense = record.dense_tracks()
    w2c = record.world2camera()[frame]
    k = intrinsics(image.shape[1], image.shape[0], RECTIFIED_HFOV_DEG)
    here = np.isfinite(dense[:, frame, 0])
    px, z = project_points(dense[here, frame], w2c, k)
    colours = depth_colours(z)
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


def preview_png(left: np.ndarray, record: ClipRecord, frame: int) -> bytes:
    """The preview picture (PNG bytes): the frame, the frame with tracks, a depth colour bar
    (m, log scale) and a 1 m scale bar at 2 m and 5 m depth in the image."""
    from matplotlib import patheffects
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.5, 5.4))
    ax_frame, ax_tracks = fig.subplots(1, 2)
    ax_frame.imshow(left)
    ax_frame.set_title(f"{record.name}: rectified left frame {frame}", fontsize=9)
    ax_tracks.imshow(draw_tracks(left, record, frame))
    shown = int(np.isfinite(record.dense_tracks()[:, frame, 0]).sum())
    ax_tracks.set_title(f"{shown} 3D tracks at this frame, trails of 8 frames", fontsize=9)
    focal = intrinsics(left.shape[1], left.shape[0], RECTIFIED_HFOV_DEG)[0, 0]
    for ax in (ax_frame, ax_tracks):
        ax.set_xticks([])
        ax.set_yticks([])
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for row, depth_m in enumerate((2.0, 5.0)):  # how long 1 m looks at that depth
        length = focal / depth_m
        y = left.shape[0] - 14 - 20 * row
        ax_tracks.plot([10, 10 + length], [y, y], color="white", lw=2.5, path_effects=outline)
        ax_tracks.text(
            14 + length,
            y,
            f"1 m at {depth_m:g} m depth",
            color="white",
            fontsize=8,
            va="center",
            path_effects=outline,
        )
    bar = fig.colorbar(
        ScalarMappable(norm=depth_norm(), cmap=DEPTH_COLORMAP),
        ax=[ax_frame, ax_tracks],
        fraction=0.025,
        pad=0.01,
    )
    bar.set_ticks(list(DEPTH_TICKS_M), labels=[f"{t:g}" for t in DEPTH_TICKS_M])
    bar.set_label("depth in this camera (m, log scale)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def save_picture(data: str, output: str, clip_id: str) -> str:
    """`<output>/preview_<clip>.png`: the rectified left frame mid-clip with the 3D tracks."""
    record = read_clip(fs.join(output, "npz", f"{clip_id}.npz"))
    source = read_clip(fs.join(data, "npz", f"{clip_id}.npz"))
    frame = record.num_frames // 2
    rectified = iter_rectified(source, find_raw_video(fs.join(data, "raw"), source, "demo"))
    left, _ = next(itertools.islice(rectified, frame, None))  # decodes no further than `frame`
    path = fs.join(output, f"preview_{clip_id}.png")
    fs.write_bytes(path, preview_png(left, record, frame))
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
        fs.join(data, "npz"),
        output,
        PipelineConfig(dense=True),  # frames + depth for the 4D recording (output/dense/)
        videos=fs.join(data, "raw"),
    )
    printable = {k: v for k, v in summary.__dict__.items() if k != "config"}
    print("summary:", json.dumps(printable, indent=2, sort_keys=True))

    print(
        f"\n{'clip':<22}{'tracks':>8}{'kept':>7}{'3D err cm':>11}{'static':>9}{'moving':>9}"
        f"{'depth err':>11}"
    )
    errors, per_clip = [], []
    for clip_id in clip_ids:
        npz = fs.join(output, "npz", f"{clip_id}.npz")
        if not fs.exists(npz):
            print(f"{clip_id:<22} failed (see {output}/failures)")
            continue
        record = read_clip(npz)
        points = point_errors(record, load_ground_truth(data, clip_id))
        scores = evaluate_clip(record, errors=points)
        errors.append(points)
        per_clip.append(
            {
                "clip": clip_id,
                "points": scores["points"],
                "median_error_cm": scores["median_error_cm"],
                "median_relative_depth_error": scores["median_relative_depth_error"],
            }
        )
        print(
            f"{clip_id:<22}{scores['tracks']:>8}{scores['fraction_kept']:>7.2f}"
            f"{scores['median_error_cm']:>11.1f}{scores['median_error_static_cm']:>9.1f}"
            f"{scores['median_error_moving_cm']:>9.1f}"
            f"{scores['median_relative_depth_error']:>10.1%}"
        )
    done = [c for c in clip_ids if fs.exists(fs.join(output, "npz", f"{c}.npz"))]
    if errors:
        bands = banded_errors(concat_point_errors(errors))
        print("\naccuracy by true depth band, all clips, beside the stereo limit:\n")
        print(format_band_table(bands))
        accuracy = {
            "bands": bands,
            "per_clip": per_clip,
            "disparity_errors_px": list(DISPARITY_ERRORS_PX),
        }
        print(f"\nreport: {write_report(output, accuracy=accuracy)}")
    if done:
        print(f"picture: {save_picture(data, output, done[0])}")
        recording = fs.join(output, f"{done[0]}.rrd")
        write_recording(
            fs.join(output, "npz", f"{done[0]}.npz"), recording, videos=fs.join(data, "raw")
        )
        print(f"4D viewer: {recording}   (open with: .venv/bin/rerun {recording})")
    print(f"outputs: {output}/npz, {output}/parquet, {output}/summary.json")
    return 0 if done else 1


if __name__ == "__main__":
    raise SystemExit(main())
