"""`export-pointmaps` command line, shared by `s4d export-pointmaps` and
`jobs/export_pointmaps.py` (`ray job submit`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from s4d_ray.argtypes import float_range, int_range


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The export job's flags."""
    parser.add_argument("--input", required=True, help="engine output folder (any fsspec URI)")
    parser.add_argument("--output", required=True, help="export folder (shards/, summary.json)")
    parser.add_argument(
        "--frames", type=int_range(1, 100_000), default=17, help="frames per window, 4k + 1"
    )
    parser.add_argument(
        "--stride",
        type=int_range(0, 100_000),
        default=0,
        help="frames between windows (0 = --frames)",
    )
    parser.add_argument(
        "--size",
        type=int_range(16, 4096),
        default=512,
        help="output size, px (K scaled, same FoV)",
    )
    parser.add_argument(
        "--min-valid",
        type=float_range(0.0, 1.0),
        default=None,
        help="drop windows with less valid depth than this (default: by the clip's stereo "
        "backend, 0.7 neural, 0.25 cpu)",
    )
    parser.add_argument(
        "--limit", type=int_range(1), default=None, help="export at most N new clips"
    )
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or local)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the export from parsed flags; print the summary. Exit code 2 for bad flags or input."""
    from s4d_ray.errors import report_error
    from s4d_ray.pointmaps.export import ExportConfig, export_pointmaps

    try:
        config = ExportConfig(args.frames, args.stride, args.size, args.min_valid)
    except ValueError as error:
        print(f"export-pointmaps: error: {error}", file=sys.stderr)
        return 2
    if args.address:
        import ray

        ray.init(address=args.address)
    try:
        summary = export_pointmaps(args.input, args.output, config, args.limit)
    except Exception as error:
        return report_error(error, "export-pointmaps")
    print(json.dumps(dataclasses.asdict(summary), indent=2, sort_keys=True))
    return 0
