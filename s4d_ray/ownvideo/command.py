"""`s4d probe` (what each raw video is and how it will be read) and `s4d poses` (pose QA:
re-estimate clips' camera poses from their videos and compare)."""

from __future__ import annotations

import argparse
import json

from s4d_ray.argtypes import Command, int_range


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d probe`'s flags: the videos, and how much to read of them."""
    parser.add_argument("videos", nargs="+", help="raw video files or URIs")
    parser.add_argument("--json", action="store_true", help="one JSON list for scripts")
    parser.add_argument(
        "--headers-only",
        action="store_true",
        help="skip the content checks of the first seconds (mono, layout, fisheye circles)",
    )


def run_probe(args: argparse.Namespace) -> int:
    """One table (or one JSON list) of what each video is and how it will be read; exit 1
    when any video is refused."""
    from s4d_ray.ownvideo.probe import probe

    reports = [probe(uri, content=not args.headers_only) for uri in args.videos]
    if args.json:
        print(json.dumps([r.to_json_dict() for r in reports], indent=1))
    else:
        print("\n\n".join(r.table() for r in reports))
    return 1 if any(r.format is None for r in reports) else 0


def add_poses_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d poses`'s flags: the clips, their videos, and where the rows go."""
    parser.add_argument("--npz", required=True, help="folder or glob of release npz (any URI)")
    parser.add_argument("--videos", required=True, help="folder of raw VR180 <video_id>.mp4")
    parser.add_argument("--limit", type=int_range(1, None), default=None, help="at most N clips")
    parser.add_argument("--out", default="", help="JSON rows (any URI)")


def run_poses(args: argparse.Namespace) -> int:
    """Pose QA per clip: print the table, write the rows as JSON when `--out` is given."""
    from s4d_ray.io import fs
    from s4d_ray.io.overlap import check_output
    from s4d_ray.ownvideo.qa import format_table, pose_qa

    check_output(args.out, {"--npz": args.npz, "--videos": args.videos}, "--out")
    uris = fs.list_files(args.npz, ".npz")
    if not uris:
        raise FileNotFoundError(f"no .npz files under {args.npz!r}")
    rows = pose_qa(uris[: args.limit] if args.limit else uris, args.videos)
    print(format_table(rows))
    if args.out:
        with fs.open_atomic(args.out, "w") as f:
            f.write(json.dumps(rows, indent=1))
    return 0


COMMANDS = (
    Command(
        "probe",
        "what each raw video is (container, codec, rate, spherical metadata, sidecar) and "
        "how it will be read (layout, projection, field of view, and from which source), "
        "or why it is refused; exit 1 if any is refused",
        add_probe_arguments,
        run_probe,
    ),
    Command(
        "poses",
        "pose QA: re-estimate release clips' camera poses from their videos and report "
        "agreement (ATE SE(3)/Sim(3), scale, rotation) per clip",
        add_poses_arguments,
        run_poses,
    ),
)
