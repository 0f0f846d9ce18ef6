"""`s4d rectify`: a release clip's raw VR180 video → its two rectified mp4s, as the Stereo4D
reference writes them (`OUT/<clip_id>/<clip_id>-{left,right}_rectified.mp4`)."""

from __future__ import annotations

import argparse

from s4d_ray.argtypes import Command, float_range


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The reference's own flags (`--vid`, `--npz_folder`, ...), so its commands run as they are."""
    parser.add_argument("--vid", required=True, help="clip id, <video_id>_<first_ts_us>")
    parser.add_argument("--npz_folder", default="stereo4d_dataset/npz")
    parser.add_argument("--raw_video_folder", default="stereo4d_dataset/raw")
    parser.add_argument("--output_folder", default="stereo4d_dataset/processed")
    parser.add_argument(
        "--output_hfov",
        type=float_range(0, 180, low_open=True, high_open=True),
        default=60.0,
        help="degrees, in (0, 180)",
    )


def run(args: argparse.Namespace) -> int:
    """Rectify the clip; print the two files written."""
    from s4d_ray.io.overlap import check_output_folder
    from s4d_ray.io.rectify import rectify_to_files

    check_output_folder(args.output_folder, "--output_folder")
    left, right = rectify_to_files(
        args.vid, args.npz_folder, args.raw_video_folder, args.output_folder, args.output_hfov
    )
    print(left)
    print(right)
    return 0


COMMANDS = (
    Command(
        "rectify",
        "raw VR180 video + release npz -> 512x512 rectified left/right mp4",
        add_arguments,
        run,
    ),
)
