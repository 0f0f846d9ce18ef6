"""`s4d demo` (`make demo`): the main job on the embedded default — local Ray, CPU backends,
synthetic VR180 — composed from every layer (a command-layer module):

1. renders synthetic VR180 clips with ground truth (`s4d synth`),
2. runs the whole pipeline on them on a local Ray cluster with the CPU backends, keeping dense
   depth (OUTPUT/dense/, so `s4d export-pointmaps OUTPUT` works on it with default flags),
3. prints the run summary and the accuracy against ground truth (median 3D track error in cm,
   fraction of tracks kept),
4. prints the accuracy by true depth band (< 2, 2-5, 5-10, 10-20 m) beside the depth error
   that stereo alone implies for a stated disparity error (δz = z²·δd/(f·b)),
5. saves a picture (a rectified frame with the output 3D tracks, a depth colour bar and a
   metric scale), writes the run report with the accuracy (output/report.html) and a Rerun
   recording of the first clip (output/<clip>.rrd; open with `.venv/bin/rerun`), with the
   frames and depth maps of the run's dense outputs.

Errors are medians over stored track points against the exact synthetic trajectories; far
static points dominate them (stereo depth error grows with distance²), so the relative depth
error is printed too.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from s4d_ray.argtypes import Command, int_range


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d demo`'s flags: where, and how much synthetic data."""
    parser.add_argument("--out", default="demo_out", help="folder for data/ and output/")
    parser.add_argument("--clips", type=int_range(1, 1000), default=2)
    parser.add_argument("--frames", type=int_range(8, 10_000), default=24)
    parser.add_argument(
        "--height",
        type=int_range(64, 4096, multiple_of=2),
        default=1024,
        help="synthetic equirect height per eye, px",
    )


def run_demo(args: argparse.Namespace) -> int:
    """Synth, run, score against ground truth, report, picture and recording (module doc);
    exit 1 when no clip came out."""
    from s4d_ray.engine.config import PipelineConfig
    from s4d_ray.engine.pipeline import run_pipeline
    from s4d_ray.geometry.rectify import LowResolutionWarning
    from s4d_ray.io import fs
    from s4d_ray.io.clip_io import read_clip
    from s4d_ray.synthetic.evaluate import (
        evaluate_clip,
        format_band_table,
        point_errors,
        run_accuracy,
    )
    from s4d_ray.synthetic.synth import SynthConfig, load_ground_truth, synth_dataset
    from s4d_ray.viz.preview import save_picture
    from s4d_ray.viz.report import write_report
    from s4d_ray.viz.rerun_view import write_recording

    warnings.simplefilter("ignore", LowResolutionWarning)
    data, output = fs.join(args.out, "data"), fs.join(args.out, "output")

    t0 = time.perf_counter()
    clip_ids = synth_dataset(
        data, SynthConfig(clips=args.clips, frames=args.frames, height=args.height)
    )
    print(f"synth: {len(clip_ids)} clips in {time.perf_counter() - t0:.1f} s -> {data}")

    summary = run_pipeline(
        fs.join(data, "npz"),
        output,
        PipelineConfig(dense=True),  # frames + depth for the 4D recording and pointmap export
        videos=fs.join(data, "raw"),
    )
    printable = {k: v for k, v in summary.__dict__.items() if k != "config"}
    print("summary:", json.dumps(printable, indent=2, sort_keys=True))

    print(
        f"\n{'clip':<22}{'tracks':>8}{'kept':>7}{'3D err cm':>11}{'static':>9}{'moving':>9}"
        f"{'depth err':>11}"
    )
    errors = {}
    for clip_id in clip_ids:
        npz = fs.join(output, "npz", f"{clip_id}.npz")
        if not fs.exists(npz):
            print(f"{clip_id:<22} failed (see {output}/failures)")
            continue
        record = read_clip(npz)
        errors[clip_id] = point_errors(record, load_ground_truth(data, clip_id))
        scores = evaluate_clip(record, errors=errors[clip_id])
        print(
            f"{clip_id:<22}{scores['tracks']:>8}{scores['fraction_kept']:>7.2f}"
            f"{scores['median_error_cm']:>11.1f}{scores['median_error_static_cm']:>9.1f}"
            f"{scores['median_error_moving_cm']:>9.1f}"
            f"{scores['median_relative_depth_error']:>10.1%}"
        )
    accuracy = run_accuracy(errors)
    if accuracy:
        print("\naccuracy by true depth band, all clips, beside the stereo limit:\n")
        print(format_band_table(accuracy["bands"]))
    print(f"\nreport: {write_report(output, accuracy=accuracy)}")
    if errors:
        first = next(iter(errors))
        print(f"picture: {save_picture(data, output, first)}")
        recording = fs.join(output, f"{first}.rrd")
        write_recording(
            fs.join(output, "npz", f"{first}.npz"), recording, videos=fs.join(data, "raw")
        )
        print(f"4D viewer: {recording}   (open with: .venv/bin/rerun {recording})")
    print(f"outputs: {output}/npz, {output}/parquet, {output}/dense, {output}/summary.json")
    return 0 if errors else 1


COMMANDS = (
    Command(
        "demo",
        "the main job on synthetic VR180 clips (local Ray, CPU backends), scored against "
        "their ground truth, with a report, a picture and a Rerun recording",
        add_demo_arguments,
        run_demo,
    ),
)
