"""The main job's command line, shared by `jobs/process_clips.py` (`ray job submit`) and `s4d run`."""

from __future__ import annotations

import argparse
import json
import sys

from s4d_ray.engine.config import ConfigError, load_config
from s4d_ray.engine.pipeline import TooManyFailuresError, run_pipeline


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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
    parser.add_argument(
        "--limit", type=_positive_int, default=None, help="process at most N new clips"
    )
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
    """Run the job from parsed flags; print the summary. Exit code 2 for a bad config or
    input (checked on the driver before Ray starts), 3 when aborted for too many failures."""
    try:
        config = load_config(
            args.config, backend=args.backend, max_failure_fraction=args.max_failure_fraction
        )
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
