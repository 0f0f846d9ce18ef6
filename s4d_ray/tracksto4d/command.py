"""`s4d tracksto4d` (TracksTo4D on clips' 2D tracks), `s4d eval-tracksto4d` (against metric
3D tracks and poses) and `s4d train-tracksto4d` (Ray Train; also `jobs/train_tracksto4d.py`
for `ray job submit`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from s4d_ray.argtypes import Command, device_name, int_range
from s4d_ray.models.device import PRECISIONS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags inference and evaluation share: checkpoint, clips, windows, device."""
    parser.add_argument("--checkpoint", required=True, help="official-format .pt (any URI)")
    parser.add_argument("--config", default=None, help="JSON config (default: beside the .pt)")
    parser.add_argument("--npz", required=True, help="release npz file, folder or glob")
    parser.add_argument(
        "--window", type=int_range(2, 10_000), default=50, help="frames per window, in [2, 10000]"
    )
    parser.add_argument(
        "--overlap",
        type=int_range(1, 9_999),
        default=10,
        help="frames shared by windows, in [1, window - 1]",
    )
    parser.add_argument(
        "--max-tracks",
        type=int_range(1, 100_000),
        default=1000,
        help="tracks per window, in [1, 100000]",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps"
    )


def inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `InferenceConfig` fields among the parsed flags."""
    return {
        "window": args.window,
        "overlap": args.overlap,
        "max_tracks": args.max_tracks,
        "precision": args.precision,
    }


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d tracksto4d`'s flags: the model's, plus the output root."""
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, help="output root (npz/ and parquet/)")


def run_inference(args: argparse.Namespace) -> int:
    """Run TracksTo4D on every clip; print the run summary."""
    from s4d_ray.tracksto4d.inference import InferenceConfig, run_tracksto4d

    config = InferenceConfig(**inference_options(args))
    summary = run_tracksto4d(
        args.checkpoint, args.npz, args.output, config, args.device, args.config
    )
    print(json.dumps(summary, indent=1))
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d eval-tracksto4d`'s flags: the model's, plus the JSON result."""
    add_model_arguments(parser)
    parser.add_argument("--out", default=None, help="JSON result (any URI)")


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate; print the mean scores (window and overlap are checked before any work)."""
    from s4d_ray.tracksto4d.evaluate import evaluate_checkpoint
    from s4d_ray.tracksto4d.inference import InferenceConfig

    InferenceConfig(**inference_options(args))
    result = evaluate_checkpoint(
        args.checkpoint, args.npz, args.out, args.device, args.config, **inference_options(args)
    )
    print(json.dumps(result["summary"]["mean"], indent=1))
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d train-tracksto4d`'s flags: every training job's (`train_loop`) plus the model's."""
    from s4d_ray.train_loop import add_run_arguments

    add_run_arguments(
        parser,
        init_help="official-format TracksTo4D .pt (JSON beside it)",
        batch_help="samples per worker per step",
    )
    parser.add_argument(
        "--unsupervised", dest="supervised", action="store_false",
        help="official losses only (default adds metric 3D / pose / movement supervision)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-steps", type=int_range(0), default=0, help="official camera warm-up"
    )
    parser.add_argument("--frames", type=int_range(2), default=50, help="frames per sample")
    parser.add_argument("--tracks", type=int_range(1), default=256, help="tracks per sample")
    parser.add_argument(
        "--min-visible", type=int_range(1), default=10, help="frames a track is seen"
    )
    parser.add_argument("--samples-per-clip", type=int_range(1), default=16)


def run_train(args: argparse.Namespace) -> int:
    """Train (resuming from `--checkpoint-dir`); print the final step, model and metrics."""
    from s4d_ray.tracksto4d.train import TrainSettings, train
    from s4d_ray.train_loop import run_training

    return run_training(args, TrainSettings, train)


COMMANDS = (
    Command(
        "tracksto4d",
        "TracksTo4D on clips' 2D tracks: cameras, 3D points, movement",
        add_inference_arguments,
        run_inference,
    ),
    Command(
        "eval-tracksto4d",
        "TracksTo4D vs metric 3D tracks/poses: Abs Rel, delta, ATE, RPE",
        add_eval_arguments,
        run_eval,
    ),
    Command(
        "train-tracksto4d",
        "train TracksTo4D on clips with Ray Train (resumes from --checkpoint-dir)",
        add_train_arguments,
        run_train,
    ),
)
