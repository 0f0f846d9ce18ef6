"""Train DynaDUSt3R on Stereo4D clips with Ray Train (the `ray job submit` entry point).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_dynadust3r.py --npz gs://stereo4d/train --videos gs://my-bucket/raw \
        --init gs://my-bucket/DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth \
        --checkpoint-dir gs://my-bucket/dynadust3r --num-workers 8 --use-gpu

Re-running with the same --checkpoint-dir resumes. The loop is `s4d_ray.dynadust3r.train`.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python jobs/train_dynadust3r.py` from a Ray working dir
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s4d_ray.dynadust3r.train import TrainSettings, train  # noqa: E402
from s4d_ray.train_loop import add_run_arguments, run_job, settings_values  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(
        parser,
        init_help="official DUSt3R .pth (or one of ours) to start from",
        batch_help="pairs per worker per step",
    )
    parser.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    parser.add_argument("--rectified", default="", help="folder of <clip_id>-left_rectified.mp4")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, default=512, help="square input size, px")
    parser.add_argument("--pairs-per-clip", type=int, default=16)
    parser.add_argument("--min-tracks", type=int, default=256, help="tracks seen at i, j and k")
    parser.add_argument("--norm-mode", choices=("metric", "avg_dis"), default="metric")
    parser.add_argument("--alpha", type=float, default=0.2, help="ConfLoss log-confidence weight")


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """TrainSettings from the parsed flags (`--tiny` = no --init)."""
    return TrainSettings(**settings_values(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_job(parser, argv, TrainSettings, train)


if __name__ == "__main__":
    sys.exit(main())
