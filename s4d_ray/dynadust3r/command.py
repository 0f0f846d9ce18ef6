"""`s4d predict` (DynaDUSt3R on one frame pair), `s4d eval-dynadust3r` (3D motion end-point
error on held-out clips) and `s4d train-dynadust3r` (Ray Train; also `jobs/train_dynadust3r.py`
for `ray job submit`)."""

from __future__ import annotations

import argparse
import json

from s4d_ray.argtypes import Command, device_name, float_range, int_range
from s4d_ray.dynadust3r import MAX_INPUT_SIZE


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d predict`'s flags: the checkpoint, two images or a video pair, the query time."""
    parser.add_argument("--checkpoint", required=True, help="DUSt3R/DynaDUSt3R .pth (any URI)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs=2, metavar=("A", "B"), help="two image files")
    source.add_argument("--video", help="a video; frames --pair I J")
    parser.add_argument(
        "--pair",
        nargs=2,
        type=int_range(0, 10_000_000),
        default=(0, 10),
        metavar=("I", "J"),
        help="0-based frame numbers of the video (--video)",
    )
    parser.add_argument(
        "--time", type=float_range(0.0, 1.0), default=0.5, help="query time in [0, 1]"
    )
    parser.add_argument("--out", required=True, help="output folder (any URI)")
    parser.add_argument(
        "--size",
        type=int_range(16, MAX_INPUT_SIZE),
        default=512,
        help=f"long side of the model input, px (at most {MAX_INPUT_SIZE})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int_range(1, 1 << 31),
        default=None,
        help="refuse input images or video frames with more pixels (default 40000000: "
        "s4d_ray.dynadust3r.inference.MAX_IMAGE_PIXELS)",
    )
    parser.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps"
    )


def run_predict(args: argparse.Namespace) -> int:
    """Predict one pair; print the files written (prediction.npz and .png)."""
    from s4d_ray.dynadust3r.inference import predict_to_files, read_image, read_video_pair
    from s4d_ray.io import fs
    from s4d_ray.io.overlap import check_output, check_output_folder

    sources = {"--video": args.video or "", "--checkpoint": args.checkpoint}
    sources.update({f"--images {i + 1}": uri for i, uri in enumerate(args.images or [])})
    for name in ("prediction.npz", "prediction.png"):
        check_output(fs.join(args.out, name), sources, "--out")
    check_output_folder(args.out, "--out")
    if args.video:
        first, second = args.pair
        image1, image2 = read_video_pair(args.video, first, second, max_pixels=args.max_pixels)
    else:
        image1, image2 = (read_image(uri, max_pixels=args.max_pixels) for uri in args.images)
    for path in predict_to_files(
        args.checkpoint, image1, image2, args.time, args.out, args.size, args.device
    ):
        print(path)
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d eval-dynadust3r`'s flags: the checkpoint, the held-out clips, the pair sampling."""
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--npz", required=True, help="folder or glob of release npz")
    parser.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    parser.add_argument("--rectified", default="", help="folder of <clip_id>-left_rectified.mp4")
    parser.add_argument("--limit", type=int_range(1), default=None, help="at most N clips")
    parser.add_argument("--align-scale", action="store_true", help="per-pair LSQ scale")
    parser.add_argument("--image-size", type=int_range(16, MAX_INPUT_SIZE), default=512)
    parser.add_argument("--pairs-per-clip", type=int_range(1, 10_000), default=16)
    parser.add_argument("--min-tracks", type=int_range(0), default=256)
    parser.add_argument(
        "--seed", type=int_range(0, 2**63 - 1), default=1, help="pair sampling (training uses 0)"
    )
    parser.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps"
    )
    parser.add_argument("--out", default="dynadust3r_eval.json", help="JSON result (any URI)")


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate; print EPE and the fractions under 5 and 10 cm; write the JSON result."""
    from s4d_ray.dynadust3r.data import SampleConfig
    from s4d_ray.dynadust3r.evaluate import evaluate_checkpoint, write_json
    from s4d_ray.io.overlap import check_output

    inputs = {"--npz": args.npz, "--videos": args.videos, "--rectified": args.rectified}
    check_output(args.out, {**inputs, "--checkpoint": args.checkpoint}, "--out")
    config = SampleConfig(
        image_size=args.image_size,
        pairs_per_clip=args.pairs_per_clip,
        min_tracks=args.min_tracks,
        seed=args.seed,
    )
    result = evaluate_checkpoint(
        args.checkpoint,
        args.npz,
        args.videos,
        args.rectified,
        args.limit,
        args.align_scale,
        config,
        args.device,
    )
    print(
        f"EPE {result['epe_m']:.4f} m  <5cm {result['under_5cm']:.1%}  "
        f"<10cm {result['under_10cm']:.1%}  ({result['points']} points, {result['pairs']} pairs)"
    )
    write_json(result, args.out)
    print(json.dumps({"json": args.out}))
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d train-dynadust3r`'s flags: every training job's (`train_loop`) plus the model's."""
    from s4d_ray.train_loop import add_run_arguments

    add_run_arguments(
        parser,
        init_help="official DUSt3R .pth (or one of ours) to start from",
        batch_help="pairs per worker per step",
    )
    parser.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    parser.add_argument("--rectified", default="", help="folder of <clip_id>-left_rectified.mp4")
    parser.add_argument("--weight-decay", type=float_range(0), default=0.05)
    parser.add_argument(
        "--image-size",
        type=int_range(16, MAX_INPUT_SIZE),
        default=512,
        help="square input size, px",
    )
    parser.add_argument("--pairs-per-clip", type=int_range(1), default=16)
    parser.add_argument(
        "--min-tracks", type=int_range(0), default=256, help="tracks seen at i, j and k"
    )
    parser.add_argument("--norm-mode", choices=("metric", "avg_dis"), default="metric")
    parser.add_argument(
        "--alpha", type=float_range(0), default=0.2, help="ConfLoss log-confidence weight"
    )


def run_train(args: argparse.Namespace) -> int:
    """Train (resuming from `--checkpoint-dir`); print the final step, model and metrics."""
    from s4d_ray.dynadust3r.train import TrainSettings, train
    from s4d_ray.train_loop import run_training

    return run_training(args, TrainSettings, train)


COMMANDS = (
    Command(
        "predict",
        "DynaDUSt3R on one frame pair: pointmaps + 3D motion (npz) and a PNG",
        add_predict_arguments,
        run_predict,
    ),
    Command(
        "eval-dynadust3r",
        "3D end-point error of DynaDUSt3R motion on held-out clips",
        add_eval_arguments,
        run_eval,
    ),
    Command(
        "train-dynadust3r",
        "train DynaDUSt3R on clips with Ray Train (resumes from --checkpoint-dir)",
        add_train_arguments,
        run_train,
    ),
)
