"""Train TracksTo4D on Stereo4D clips with Ray Train (the `ray job submit` entry point).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_tracksto4d.py --npz gs://stereo4d/train \
        --init gs://my-bucket/TracksTo4D_pretrained_cats_dogs.pt \
        --checkpoint-dir gs://my-bucket/tracksto4d --num-workers 4 --use-gpu

No video is needed: 2D tracks are the release 3D tracks projected into their cameras.
Re-running with the same --checkpoint-dir resumes. The loop is `s4d_ray.tracksto4d.train`.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python jobs/train_tracksto4d.py` from a Ray working dir
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s4d_ray.tracksto4d.train import TrainSettings, train  # noqa: E402
from s4d_ray.train_loop import add_run_arguments, run_job  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(
        parser,
        init_help="official-format TracksTo4D .pt (JSON beside it)",
        batch_help="samples per worker per step",
    )
    parser.add_argument(
        "--unsupervised", dest="supervised", action="store_false",
        help="official losses only (default adds metric 3D / pose / movement supervision)",
    )  # fmt: skip
    parser.add_argument("--warmup-steps", type=int, default=0, help="official camera warm-up")
    parser.add_argument("--frames", type=int, default=50, help="frames per sample")
    parser.add_argument("--tracks", type=int, default=256, help="tracks per sample")
    parser.add_argument("--min-visible", type=int, default=10, help="frames a track is seen")
    parser.add_argument("--samples-per-clip", type=int, default=16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_job(parser, argv, TrainSettings, train)


if __name__ == "__main__":
    sys.exit(main())
