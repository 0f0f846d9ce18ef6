"""Train DynaDUSt3R on Stereo4D clips with Ray Train (the `ray job submit` entry point).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_dynadust3r.py --npz gs://stereo4d/train --videos gs://my-bucket/raw \
        --init gs://my-bucket/DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth \
        --checkpoint-dir gs://my-bucket/dynadust3r --num-workers 8 --use-gpu

Re-running with the same --checkpoint-dir resumes. The loop is `s4d_ray.dynadust3r.train`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

if __package__ in (None, ""):  # `python jobs/train_dynadust3r.py` from a Ray working dir
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s4d_ray.dynadust3r.train import TrainSettings, train  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--npz", required=True, help="folder or glob of release npz (any URI)")
    parser.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    parser.add_argument("--rectified", default="", help="folder of <clip_id>-left_rectified.mp4")
    parser.add_argument("--checkpoint-dir", required=True, help="checkpoints (any fsspec URI)")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--init", help="official DUSt3R .pth (or one of ours) to start from")
    start.add_argument("--tiny", action="store_true", help="tiny random model (tests, CPU)")
    parser.add_argument("--steps", type=int, default=1000, help="total optimiser steps")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per worker per step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, default=512, help="square input size, px")
    parser.add_argument("--pairs-per-clip", type=int, default=16)
    parser.add_argument("--min-tracks", type=int, default=256, help="tracks seen at i, j and k")
    parser.add_argument("--limit", type=int, default=None, help="use at most N clips")
    parser.add_argument("--norm-mode", choices=("metric", "avg_dis"), default="metric")
    parser.add_argument("--alpha", type=float, default=0.2, help="ConfLoss log-confidence weight")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="bf16", help="GPU autocast"
    )
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="newest N kept")
    parser.add_argument("--log-every", type=int, default=10, help="steps between reports")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--torch-threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--max-failures", type=int, default=0, help="worker-group restarts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS/local)")


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """TrainSettings from the parsed flags (`--tiny` = no --init)."""
    values = {k: v for k, v in vars(args).items() if k != "tiny"}
    return TrainSettings(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    latest = train(settings)
    final = latest["history"][-1] if latest["history"] else {}
    print(json.dumps({"step": latest["step"], "model": latest["model"], **final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
