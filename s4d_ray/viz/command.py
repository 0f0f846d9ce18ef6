"""`s4d view` (a Rerun 4D recording of one clip) and `s4d report` (rebuild a run's
OUTPUT/report.html, with ground-truth accuracy for synthetic clips)."""

from __future__ import annotations

import argparse

from s4d_ray.argtypes import Command, int_range


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d view`'s flags: the clip, its frames' sources, what to show, where to open it."""
    parser.add_argument(
        "clip", help="release-format npz of the clip (ours or the release; any URI)"
    )
    parser.add_argument("--out", required=True, help="the .rrd to write (any URI)")
    parser.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    parser.add_argument("--rectified", default="", help="folder of <clip_id>-left_rectified.mp4")
    parser.add_argument(
        "--dense",
        default="",
        help="engine output root with dense/<clip_id>/ (default: beside the npz)",
    )
    parser.add_argument(
        "--max-tracks",
        type=int_range(0, 10_000_000),
        default=3000,
        help="subsample to N tracks (0: all)",
    )
    parser.add_argument(
        "--frame-step", type=int_range(1, 1_000_000), default=1, help="log every k-th frame"
    )
    parser.add_argument(
        "--trail", type=int_range(0, 1_000_000), default=10, help="frames of history per track"
    )
    parser.add_argument("--colour", choices=("depth", "motion"), default="depth")
    parser.add_argument("--web", action="store_true", help="then open it in Rerun's web viewer")
    parser.add_argument(
        "--serve", action="store_true", help="then serve the web viewer with it (headless)"
    )
    parser.add_argument(
        "--port", type=int_range(1, 65535), default=9090, help="web viewer port (--web, --serve)"
    )


def run_view(args: argparse.Namespace) -> int:
    """Write the recording; print what it holds; open it when asked."""
    from s4d_ray.io import fs
    from s4d_ray.io.overlap import check_output
    from s4d_ray.viz.rerun_view import ViewOptions, open_viewer, write_recording

    inputs = {"clip": args.clip, "--videos": args.videos, "--rectified": args.rectified}
    check_output(
        args.out, {**inputs, "--dense": args.dense and fs.join(args.dense, "dense")}, "--out"
    )
    options = ViewOptions(
        max_tracks=args.max_tracks, frame_step=args.frame_step, trail=args.trail, colour=args.colour
    )
    result = write_recording(
        args.clip, args.out, args.videos, args.rectified, args.dense, options=options
    )
    print(
        f"{result.path}: {result.frames_logged} frames, {result.tracks_shown} of "
        f"{result.tracks_total} tracks, {result.images_logged} images, {result.depth_logged} depth maps"
    )
    for item in result.missing:
        print(f"missing: {item}")
    if args.web or args.serve:
        return open_viewer(args.out, web=args.web, serve=args.serve, port=args.port)
    print(f"open it with: rerun {args.out}")
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d report`'s flags: the run's output folder and, optionally, its ground truth."""
    parser.add_argument("output", help="the job's output folder (any URI)")
    parser.add_argument(
        "--ground-truth", default="", help="synthetic data folder (with gt/) for accuracy"
    )


def run_report(args: argparse.Namespace) -> int:
    """Rebuild the report (with `--ground-truth`: its accuracy section from the synthetic
    ground truth of the done clips); print its URI."""
    from s4d_ray.viz.report import read_clip_rows, write_report

    accuracy = None
    if args.ground_truth:
        from s4d_ray.synthetic.evaluate import ground_truth_accuracy

        clip_ids = [row["name"] for row in read_clip_rows(args.output)]
        accuracy = ground_truth_accuracy(args.output, args.ground_truth, clip_ids)
    print(write_report(args.output, accuracy=accuracy))
    return 0


COMMANDS = (
    Command(
        "view",
        "a Rerun 4D recording (.rrd) of one clip: cameras, tracks, frames, depth",
        add_view_arguments,
        run_view,
    ),
    Command(
        "report",
        "rebuild OUTPUT/report.html from a run's outputs",
        add_report_arguments,
        run_report,
    ),
)
