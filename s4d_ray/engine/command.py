"""The main job's command line, shared by `jobs/process_clips.py` (`ray job submit`) and `s4d run`."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading

from s4d_ray.argtypes import float_range, int_range
from s4d_ray.engine.config import ConfigError, load_config
from s4d_ray.engine.own_videos import own_video_config
from s4d_ray.engine.pipeline import run_pipeline
from s4d_ray.errors import InputError, report_error
from s4d_ray.ownvideo.prepare import VIDEO_TIMEOUT_S


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, naming the address, when nothing listens at a `host:port` or
    `ray://host:port` Ray address (`ray.init` would retry for minutes); other forms
    ('auto', 'local', no port) are left to Ray."""
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {error}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's flags (shared with `s4d run`)."""
    parser.add_argument(
        "--npz",
        default="",
        help="folder or glob of release npz (any fsspec URI); leave out for your own videos: "
        "every <video_id>.mp4 under --videos is split into clips, calibrated and posed",
    )
    parser.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    parser.add_argument(
        "--min-clip-frames",
        type=int_range(1),
        default=32,
        help="own videos (no --npz): drop clips shorter than this",
    )
    parser.add_argument(
        "--max-clip-frames",
        type=int_range(1),
        default=200,
        help="own videos (no --npz): split longer shots into clips of at most this many frames",
    )
    parser.add_argument(
        "--video-timeout-s",
        type=float_range(0),
        default=VIDEO_TIMEOUT_S,
        help="own videos: a video not prepared within this many seconds is a failure row "
        "(0: no limit)",
    )
    parser.add_argument(
        "--rectified",
        default="",
        help="folder of <clip_id>-{left,right}_rectified.mp4 instead of raw videos",
    )
    parser.add_argument("--output", required=True, help="output folder (any fsspec URI)")
    parser.add_argument("--backend", choices=("cpu", "neural"), default=None, help="default: cpu")
    parser.add_argument(
        "--limit", type=int_range(1), default=None, help="process at most N new clips"
    )
    parser.add_argument("--config", default=None, help="YAML/JSON config (resources, weights, ...)")
    parser.add_argument(
        "--max-failure-fraction",
        type=float_range(0.0, 1.0),
        default=None,
        help="abort when more than this fraction of clips fail (a systemic error); default 1.0 = never",
    )
    parser.add_argument(
        "--dense",
        action="store_true",
        help="also write per clip the rectified frames (mp4), stereo depth and intrinsics "
        "under OUTPUT/dense/<clip_id>/ (for pointmap export and training)",
    )
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or local)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the job from parsed flags; print the summary. Exit code 2 for a bad config or
    input (checked on the driver before Ray starts), 3 when aborted for too many failures."""
    try:
        config = load_config(
            args.config,
            backend=args.backend,
            max_failure_fraction=args.max_failure_fraction,
            dense=True if getattr(args, "dense", False) else None,
        )
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # `ray job stop` sends SIGTERM: unwind (the output lease is released) instead of dying
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.address:
            import ray

            check_reachable(args.address)
            ray.init(address=args.address)
        own_videos = None
        if not args.npz:
            if not args.videos:
                raise InputError("give release clips (--npz) or your own videos (--videos)")
            own_videos = own_video_config(
                args.min_clip_frames, args.max_clip_frames, args.video_timeout_s
            )
        summary = run_pipeline(
            args.npz, args.output, config, args.videos, args.rectified, args.limit, own_videos
        )
    except Exception as error:
        return report_error(error, "s4d run")
    printable = {k: v for k, v in summary.__dict__.items() if k != "config"}
    print(json.dumps(printable, indent=2, sort_keys=True))
    return 0
