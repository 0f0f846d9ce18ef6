"""`s4d export-pointmaps` (also `jobs/export_pointmaps.py` for `ray job submit`) and
`s4d eval-pointmaps`."""

from __future__ import annotations

import argparse
import dataclasses
import json

from s4d_ray.argtypes import Command, float_range, int_range


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
    """Run the export from parsed flags; print the summary."""
    from s4d_ray.pointmaps.export import ExportConfig, export_pointmaps

    config = ExportConfig(args.frames, args.stride, args.size, args.min_valid)
    if args.address:
        import ray

        ray.init(address=args.address)
    summary = export_pointmaps(args.input, args.output, config, args.limit)
    print(json.dumps(dataclasses.asdict(summary), indent=2, sort_keys=True))
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d eval-pointmaps`'s flags: predicted and reference shards, the JSON result."""
    parser.add_argument("--pred", required=True, help="shards with <key>.pointmaps.npy [T,H,W,3]")
    parser.add_argument("--ref", required=True, help="export-pointmaps output (or its shards)")
    parser.add_argument("--out", default="pointmaps_eval.json", help="JSON result (any URI)")


def run_eval(args: argparse.Namespace) -> int:
    """Score predicted pointmaps against exported windows; print the means, write the JSON."""
    from s4d_ray.io.overlap import check_output
    from s4d_ray.pointmaps.evaluate import evaluate_pointmaps, write_json

    check_output(args.out, {"--pred": args.pred, "--ref": args.ref}, "--out")
    result = evaluate_pointmaps(args.pred, args.ref)
    write_json(result, args.out)
    print(
        json.dumps(
            {"samples": result["samples"], "mean": result["mean"], "json": args.out}, indent=2
        )
    )
    return 0


COMMANDS = (
    Command(
        "export-pointmaps",
        "engine outputs (run with --dense) -> 4D pointmap windows as WebDataset shards (Ray Data)",
        add_arguments,
        run,
    ),
    Command(
        "eval-pointmaps",
        "Abs Rel, delta<1.25, ATE/RPE of predicted pointmaps vs exported windows",
        add_eval_arguments,
        run_eval,
    ),
)
