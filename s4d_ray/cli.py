"""`s4d` command line: one entry point, a subcommand per job. Heavy imports happen per command."""

from __future__ import annotations

import argparse
import logging
import sys


def _synth(args: argparse.Namespace) -> int:
    from s4d_ray.synth import SynthConfig, synth_dataset

    config = SynthConfig(
        clips=args.clips,
        frames=args.frames,
        height=args.height,
        seed=args.seed,
        tracks=args.tracks,
        num_objects=args.objects,
    )
    for clip_id in synth_dataset(args.out, config):
        print(clip_id)
    return 0


def _rectify(args: argparse.Namespace) -> int:
    from s4d_ray.rectify import rectify_to_files

    left, right = rectify_to_files(
        args.vid, args.npz_folder, args.raw_video_folder, args.output_folder, args.output_hfov
    )
    print(left)
    print(right)
    return 0


def _run(args: argparse.Namespace) -> int:
    from jobs.process_clips import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s4d", description="Stereo VR180 video to metric 4D training data (Stereo4D)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser(
        "synth", help="render synthetic VR180 clips with ground truth (Stereo4D dataset layout)"
    )
    synth.add_argument("--out", required=True, help="output folder or URI (raw/, npz/, gt/)")
    synth.add_argument("--clips", type=int, default=2, help="number of clips (one video each)")
    synth.add_argument("--frames", type=int, default=24, help="frames per clip")
    synth.add_argument("--height", type=int, default=512, help="equirect height per eye, px")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--tracks", type=int, default=1500, help="ground-truth tracks per clip")
    synth.add_argument("--objects", type=int, default=4, help="moving objects per scene")
    synth.set_defaults(func=_synth)

    rectify = sub.add_parser(
        "rectify", help="raw VR180 video + release npz -> 512x512 rectified left/right mp4"
    )
    rectify.add_argument("--vid", required=True, help="clip id, <video_id>_<first_ts_us>")
    rectify.add_argument("--npz_folder", default="stereo4d_dataset/npz")
    rectify.add_argument("--raw_video_folder", default="stereo4d_dataset/raw")
    rectify.add_argument("--output_folder", default="stereo4d_dataset/processed")
    rectify.add_argument("--output_hfov", type=float, default=60.0, help="degrees")
    rectify.set_defaults(func=_rectify)

    from jobs.process_clips import add_arguments

    run = sub.add_parser(
        "run", help="the main job: process clips into 4D tracks on Ray (local or --address)"
    )
    add_arguments(run)
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `s4d` console script."""
    from s4d_ray.clip_io import ClipValidationError
    from s4d_ray.errors import StageError
    from s4d_ray.ids import UnsafeIdError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (StageError, ClipValidationError, UnsafeIdError, FileNotFoundError) as e:
        print(f"s4d {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
