"""`s4d synth`: synthetic VR180 clips with exact ground truth, in every layout, projection,
container and metadata kind a real VR180 file comes in (`synthetic.synth`)."""

from __future__ import annotations

import argparse

from s4d_ray.argtypes import Command, float_range, int_range
from s4d_ray.geometry.stereo_format import LAYOUTS, PROJECTIONS
from s4d_ray.synthetic.synth import CONTAINERS


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """`s4d synth`'s flags: how many clips, their size, and the kind of VR180 file."""
    parser.add_argument("--out", required=True, help="output folder or URI (raw/, npz/, gt/)")
    parser.add_argument(
        "--clips", type=int_range(1, 100_000), default=2, help="number of clips (one video each)"
    )
    parser.add_argument("--frames", type=int_range(1, 10_000), default=24, help="frames per clip")
    parser.add_argument(
        "--height",
        type=int_range(16, 4096, multiple_of=2),
        default=512,
        help="equirect height per eye, px (even: H.264 4:2:0)",
    )
    parser.add_argument("--seed", type=int_range(0), default=0)
    parser.add_argument(
        "--tracks", type=int_range(1, 1_000_000), default=1500, help="ground-truth tracks per clip"
    )
    parser.add_argument(
        "--objects", type=int_range(0, 1000), default=4, help="moving objects per scene"
    )
    parser.add_argument(
        "--camera-speed",
        type=float_range(0, 10),
        default=0.0,
        help="the rig's speed, m/s (0: drawn per scene, 0.4-0.9; path = speed x clip duration)",
    )
    parser.add_argument(
        "--mover-scale",
        type=float_range(0.1, 5),
        default=1.0,
        help="size factor of the moving objects (2.5: about a third of the view moves)",
    )
    parser.add_argument(
        "--depth-scale",
        type=float_range(0.5, 10),
        default=1.0,
        help="size factor of the street (2.5: most of the scene beyond 10 m)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="left-right",
        help="where the eyes are stored (right-left: the left eye on the right)",
    )
    parser.add_argument("--projection", choices=PROJECTIONS, default="equirect")
    parser.add_argument(
        "--fov-deg",
        type=float_range(10, 360),
        default=0.0,
        help="each eye's field, deg (default: 180 equirect, 190 fisheye; 360: full equirect)",
    )
    parser.add_argument(
        "--eye-width",
        type=int_range(0, 8192, multiple_of=2),
        default=0,
        help="squeeze each eye to this width, px (0: square pixels)",
    )
    parser.add_argument("--container", choices=sorted(CONTAINERS), default="mp4")
    parser.add_argument(
        "--metadata",
        action="store_true",
        help="write the layout and projection into the file (mp4 st3d/sv3d, mkv/webm StereoMode)",
    )
    parser.add_argument(
        "--sidecar", action="store_true", help="write <file>.s4d.json describing the format"
    )
    parser.add_argument(
        "--title", default="", help="name the video '<title> [<video_id>].<ext>' as yt-dlp does"
    )
    parser.add_argument(
        "--supersample",
        type=int_range(1, 8),
        default=1,
        help="rays per pixel along each axis (2: anti-aliased far textures, 4x slower)",
    )


def run_synth(args: argparse.Namespace) -> int:
    """Render the clips; print their ids."""
    from s4d_ray.synthetic.synth import SceneShape, SynthConfig, synth_dataset

    config = SynthConfig(
        clips=args.clips,
        frames=args.frames,
        height=args.height,
        seed=args.seed,
        tracks=args.tracks,
        num_objects=args.objects,
        layout=args.layout,
        projection=args.projection,
        fov_deg=args.fov_deg,
        eye_width=args.eye_width,
        container=args.container,
        metadata=args.metadata,
        sidecar=args.sidecar,
        title=args.title,
        supersample=args.supersample,
        shape=SceneShape(args.camera_speed, args.mover_scale, args.depth_scale),
    )
    for clip_id in synth_dataset(args.out, config):
        print(clip_id)
    return 0


COMMANDS = (
    Command(
        "synth",
        "render synthetic VR180 clips with ground truth (Stereo4D dataset layout)",
        add_synth_arguments,
        run_synth,
    ),
)
