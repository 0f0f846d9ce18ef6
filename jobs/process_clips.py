"""Process Stereo4D clips into metric 4D tracks on a Ray cluster (the main job).

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml -- \
        python jobs/process_clips.py --npz gs://stereo4d/train --videos gs://my-bucket/raw \
        --output gs://my-bucket/stereo4d-out --backend neural

Writes OUTPUT/npz/<clip_id>.npz, OUTPUT/parquet/*.parquet, OUTPUT/failures/*.parquet and
OUTPUT/summary.json. Re-running with the same output skips complete clips.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

if __package__ in (None, ""):  # `python jobs/process_clips.py` from a Ray working dir
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s4d_ray.config import load_config  # noqa: E402
from s4d_ray.pipeline import TooManyFailuresError, run_pipeline  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's flags (shared with `s4d run`)."""
    parser.add_argument(
        "--npz", required=True, help="folder or glob of release npz (any fsspec URI)"
    )
    parser.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    parser.add_argument(
        "--rectified",
        default="",
        help="folder of <clip_id>-{left,right}_rectified.mp4 instead of raw videos",
    )
    parser.add_argument("--output", required=True, help="output folder (any fsspec URI)")
    parser.add_argument("--backend", choices=("cpu", "neural"), default=None, help="default: cpu")
    parser.add_argument("--limit", type=int, default=None, help="process at most N new clips")
    parser.add_argument("--config", default=None, help="YAML/JSON config (resources, weights, ...)")
    parser.add_argument(
        "--max-failure-fraction",
        type=float,
        default=None,
        help="abort when more than this fraction of clips fail (a systemic error); default 1.0 = never",
    )
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or local)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the job from parsed flags; print the summary; exit code 3 when aborted."""
    config = load_config(
        args.config, backend=args.backend, max_failure_fraction=args.max_failure_fraction
    )
    if args.address:
        import ray

        ray.init(address=args.address)
    try:
        summary = run_pipeline(
            args.npz, args.output, config, args.videos, args.rectified, args.limit
        )
    except TooManyFailuresError as error:
        print(f"aborted: {error}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    printable = {k: v for k, v in summary.__dict__.items() if k != "config"}
    print(json.dumps(printable, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
