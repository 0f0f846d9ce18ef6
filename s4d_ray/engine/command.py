"""The main job's command line, shared by `jobs/process_clips.py` (`ray job submit`) and `s4d run`.

The command layer composes what the engine does not know: the flags (own-video settings
among them), the pipeline, then the run report (`s4d_ray.viz`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import threading

from s4d_ray.argtypes import Command, float_range, int_range
from s4d_ray.engine.config import BACKENDS, PipelineConfig, load_config
from s4d_ray.engine.pipeline import RunSummary, TooManyFailuresError, output_guard, run_clips
from s4d_ray.errors import InputError
from s4d_ray.ownvideo.clips import ClipConfig
from s4d_ray.ownvideo.prepare import (
    POSE_TASK_CPUS,
    VIDEO_TASK_CPUS,
    VIDEO_TIMEOUT_S,
    OwnVideoConfig,
)
from s4d_ray.ownvideo.source import OwnVideoSource

log = logging.getLogger("s4d_ray.engine.command")


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


def write_run_report(output: str) -> None:
    """OUTPUT/report.html from the run's outputs; a report that fails never fails the run."""
    from s4d_ray.viz.report import write_report

    try:
        log.info("run report: %s", write_report(output))
    except Exception:
        log.exception("could not write the run report under %s", output)


def run_job(
    npz: str,
    output: str,
    config: PipelineConfig,
    videos: str = "",
    rectified: str = "",
    limit: int | None = None,
    own_videos: OwnVideoConfig | None = None,
) -> RunSummary:
    """The whole job under the output's guard (paths checked, lease held): the pipeline
    (`engine.pipeline.run_clips`; with `own_videos` and no `npz`, every video under `videos`
    is its source, one decode pass per video), then OUTPUT/report.html, also when the run
    aborts for too many failures."""
    with output_guard(output, {"--npz": npz, "--videos": videos, "--rectified": rectified}):
        try:
            source = OwnVideoSource(videos, output, own_videos, config) if own_videos else None
            summary = run_clips(npz, output, config, videos, rectified, limit, source)
        except TooManyFailuresError:
            write_run_report(output)
            raise
        write_run_report(output)
        return summary


def own_video_config(
    min_clip_frames: int = 32,
    max_clip_frames: int = 200,
    timeout_s: float = VIDEO_TIMEOUT_S,
    fps: float = 0.0,
    task_cpus: float = VIDEO_TASK_CPUS,
    pose_cpus: float = POSE_TASK_CPUS,
) -> OwnVideoConfig:
    """Own-video settings from the job's flags (`fps` 0: the source rate, at most 30)."""
    clips = ClipConfig(min_clip_frames=min_clip_frames, max_clip_frames=max_clip_frames, fps=fps)
    return OwnVideoConfig(
        clips=clips, timeout_s=timeout_s, task_cpus=task_cpus, pose_cpus=pose_cpus
    )


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
        "--fps",
        type=float_range(0),
        default=0.0,
        help="own videos: frames kept per second at most, chosen at decode (default 0: the "
        "source rate, capped at 30 fps; a 60 fps video gives 30 fps clips)",
    )
    parser.add_argument(
        "--video-cpus",
        type=float_range(0.1, 256),
        default=VIDEO_TASK_CPUS,
        help="own videos: logical CPUs each video's task holds; FFmpeg decodes with as many "
        "threads (at least one). Default 0.5: one thread, two videos per core",
    )
    parser.add_argument(
        "--pose-cpus",
        type=float_range(0.1, 256),
        default=POSE_TASK_CPUS,
        help="own videos: logical CPUs each clip's pose task holds (clips are posed in Ray "
        "tasks of their own, on any node, while their video's pass goes on)",
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
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="default: cpu")
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
    """Run the job from parsed flags; print the summary. A bad config or input is refused on
    the driver before Ray starts (exit 2); too many failed clips abort the run (exit 3)."""
    config = load_config(
        args.config,
        backend=args.backend,
        max_failure_fraction=args.max_failure_fraction,
        dense=True if args.dense else None,
    )
    # `ray job stop` sends SIGTERM: unwind (the output lease is released) instead of dying
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.address:
        import ray

        check_reachable(args.address)
        ray.init(address=args.address)
    own_videos = None
    if not args.npz:
        if not args.videos:
            raise InputError("give release clips (--npz) or your own videos (--videos)")
        own_videos = own_video_config(
            args.min_clip_frames,
            args.max_clip_frames,
            args.video_timeout_s,
            args.fps,
            args.video_cpus,
            args.pose_cpus,
        )
    summary = run_job(
        args.npz, args.output, config, args.videos, args.rectified, args.limit, own_videos
    )
    printable = {k: v for k, v in summary.__dict__.items() if k != "config"}
    print(json.dumps(printable, indent=2, sort_keys=True))
    return 0


COMMANDS = (
    Command(
        "run",
        "the main job: process clips into 4D tracks on Ray (local or --address)",
        add_arguments,
        run,
    ),
)
