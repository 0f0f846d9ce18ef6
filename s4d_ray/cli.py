"""`s4d` command line: one entry point, a subcommand per job. Heavy imports happen per command."""

from __future__ import annotations

import argparse
import logging
import sys


def _synth(args: argparse.Namespace) -> int:
    from s4d_ray.synthetic.synth import SynthConfig, synth_dataset

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
    )
    for clip_id in synth_dataset(args.out, config):
        print(clip_id)
    return 0


def _check_output_folder(uri: str, flag: str) -> None:
    """Refuse an output folder that exists as something else (a file, a FIFO) before any
    work: otherwise the command fails at its first write, after the work, with an errno."""
    import os

    from s4d_ray.errors import InputError
    from s4d_ray.io import fs

    if fs.is_local(uri):
        path = fs.filesystem(uri)[1]
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{flag} {uri!r} exists and is not a folder")


def _probe(args: argparse.Namespace) -> int:
    """`s4d probe`: one table (or one JSON list) of what each video is and how it will be
    read; exit 1 when any video is refused."""
    import json

    from s4d_ray.ownvideo.probe import probe

    reports = [probe(uri, content=not args.headers_only) for uri in args.videos]
    if args.json:
        print(json.dumps([r.to_json_dict() for r in reports], indent=1))
    else:
        print("\n\n".join(r.table() for r in reports))
    return 1 if any(r.format is None for r in reports) else 0


def _rectify(args: argparse.Namespace) -> int:
    from s4d_ray.geometry.rectify import rectify_to_files

    _check_output_folder(args.output_folder, "--output_folder")
    left, right = rectify_to_files(
        args.vid, args.npz_folder, args.raw_video_folder, args.output_folder, args.output_hfov
    )
    print(left)
    print(right)
    return 0


def _run(args: argparse.Namespace) -> int:
    from s4d_ray.engine.command import run

    return run(args)


def _predict(args: argparse.Namespace) -> int:
    from s4d_ray.dynadust3r.inference import predict_to_files, read_image, read_video_pair
    from s4d_ray.io import fs
    from s4d_ray.io.overlap import check_output

    sources = {"--video": args.video or "", "--checkpoint": args.checkpoint}
    sources.update({f"--images {i + 1}": uri for i, uri in enumerate(args.images or [])})
    for name in ("prediction.npz", "prediction.png"):
        check_output(fs.join(args.out, name), sources, "--out")
    _check_output_folder(args.out, "--out")
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


def _eval_dynadust3r(args: argparse.Namespace) -> int:
    import json

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


def _tracksto4d_inference(args: argparse.Namespace) -> dict:
    return {
        "window": args.window,
        "overlap": args.overlap,
        "max_tracks": args.max_tracks,
        "precision": args.precision,
    }


def _tracksto4d(args: argparse.Namespace) -> int:
    import json

    from s4d_ray.tracksto4d.inference import InferenceConfig, run_tracksto4d

    config = InferenceConfig(**_tracksto4d_inference(args))
    summary = run_tracksto4d(
        args.checkpoint, args.npz, args.output, config, args.device, args.config
    )
    print(json.dumps(summary, indent=1))
    return 0


def _eval_tracksto4d(args: argparse.Namespace) -> int:
    import json

    from s4d_ray.tracksto4d.evaluate import evaluate_checkpoint
    from s4d_ray.tracksto4d.inference import InferenceConfig

    InferenceConfig(**_tracksto4d_inference(args))  # window/overlap refused before any work
    result = evaluate_checkpoint(
        args.checkpoint,
        args.npz,
        args.out,
        args.device,
        args.config,
        **_tracksto4d_inference(args),
    )
    print(json.dumps(result["summary"]["mean"], indent=1))
    return 0


def _add_tracksto4d_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="official-format .pt (any URI)")
    parser.add_argument("--config", default=None, help="JSON config (default: beside the .pt)")
    parser.add_argument("--npz", required=True, help="release npz file, folder or glob")
    from s4d_ray.argtypes import device_name, int_range

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
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps"
    )


def _view(args: argparse.Namespace) -> int:
    from s4d_ray.io import fs
    from s4d_ray.io.overlap import check_output
    from s4d_ray.viz.rerun_view import ViewOptions, open_viewer, write_recording

    inputs = {"clip": args.clip, "--videos": args.videos, "--rectified": args.rectified}
    check_output(
        args.out, {**inputs, "--dense": args.dense and fs.join(args.dense, "dense")}, "--out"
    )
    options = ViewOptions(
        max_tracks=args.max_tracks, frame_step=args.frame_step, trail=args.trail, colour=args.colour
    )
    result = write_recording(
        args.clip, args.out, args.videos, args.rectified, args.dense, options=options
    )
    print(
        f"{result.path}: {result.frames_logged} frames, {result.tracks_shown} of "
        f"{result.tracks_total} tracks, {result.images_logged} images, {result.depth_logged} depth maps"
    )
    for item in result.missing:
        print(f"missing: {item}")
    if args.web or args.serve:
        return open_viewer(args.out, web=args.web, serve=args.serve, port=args.port)
    print(f"open it with: rerun {args.out}")
    return 0


def _poses(args: argparse.Namespace) -> int:
    import json

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


def _report(args: argparse.Namespace) -> int:
    from s4d_ray.viz.report import write_report

    print(write_report(args.output, ground_truth=args.ground_truth))
    return 0


def _export_pointmaps(args: argparse.Namespace) -> int:
    from s4d_ray.pointmaps.command import run

    return run(args)


def _eval_pointmaps(args: argparse.Namespace) -> int:
    import json

    from s4d_ray.io.overlap import check_output
    from s4d_ray.pointmaps.evaluate import evaluate_pointmaps, write_json
    from s4d_ray.pointmaps.reader import SampleError

    check_output(args.out, {"--pred": args.pred, "--ref": args.ref}, "--out")
    try:
        result = evaluate_pointmaps(args.pred, args.ref)
    except SampleError as error:
        print(f"s4d eval-pointmaps: error: {error}", file=sys.stderr)
        return 2
    write_json(result, args.out)
    print(
        json.dumps(
            {"samples": result["samples"], "mean": result["mean"], "json": args.out}, indent=2
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from s4d_ray.argtypes import device_name, float_range, int_range
    from s4d_ray.dynadust3r import MAX_INPUT_SIZE
    from s4d_ray.io.stereo_format import LAYOUTS, PROJECTIONS
    from s4d_ray.synthetic.synth import CONTAINERS

    parser = argparse.ArgumentParser(
        prog="s4d", description="Stereo VR180 video to metric 4D training data (Stereo4D)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser(
        "synth", help="render synthetic VR180 clips with ground truth (Stereo4D dataset layout)"
    )
    synth.add_argument("--out", required=True, help="output folder or URI (raw/, npz/, gt/)")
    synth.add_argument(
        "--clips", type=int_range(1, 100_000), default=2, help="number of clips (one video each)"
    )
    synth.add_argument("--frames", type=int_range(1, 10_000), default=24, help="frames per clip")
    synth.add_argument(
        "--height",
        type=int_range(16, 4096, multiple_of=2),
        default=512,
        help="equirect height per eye, px (even: H.264 4:2:0)",
    )
    synth.add_argument("--seed", type=int_range(0), default=0)
    synth.add_argument(
        "--tracks", type=int_range(1, 1_000_000), default=1500, help="ground-truth tracks per clip"
    )
    synth.add_argument(
        "--objects", type=int_range(0, 1000), default=4, help="moving objects per scene"
    )
    synth.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="left-right",
        help="where the eyes are stored (right-left: the left eye on the right)",
    )
    synth.add_argument("--projection", choices=PROJECTIONS, default="equirect")
    synth.add_argument(
        "--fov-deg",
        type=float_range(10, 360),
        default=0.0,
        help="each eye's field, deg (default: 180 equirect, 190 fisheye; 360: full equirect)",
    )
    synth.add_argument(
        "--eye-width",
        type=int_range(0, 8192, multiple_of=2),
        default=0,
        help="squeeze each eye to this width, px (0: square pixels)",
    )
    synth.add_argument("--container", choices=sorted(CONTAINERS), default="mp4")
    synth.add_argument(
        "--metadata",
        action="store_true",
        help="write the layout and projection into the file (mp4 st3d/sv3d, mkv/webm StereoMode)",
    )
    synth.add_argument(
        "--sidecar", action="store_true", help="write <file>.s4d.json describing the format"
    )
    synth.add_argument(
        "--title", default="", help="name the video '<title> [<video_id>].<ext>' as yt-dlp does"
    )
    synth.add_argument(
        "--supersample",
        type=int_range(1, 8),
        default=1,
        help="rays per pixel along each axis (2: anti-aliased far textures, 4x slower)",
    )
    synth.set_defaults(func=_synth)

    probe = sub.add_parser(
        "probe",
        help="what each raw video is (container, codec, rate, spherical metadata, sidecar) and "
        "how it will be read (layout, projection, field of view, and from which source), "
        "or why it is refused; exit 1 if any is refused",
    )
    probe.add_argument("videos", nargs="+", help="raw video files or URIs")
    probe.add_argument("--json", action="store_true", help="one JSON list for scripts")
    probe.add_argument(
        "--headers-only",
        action="store_true",
        help="skip the content checks of the first seconds (mono, layout, fisheye circles)",
    )
    probe.set_defaults(func=_probe)

    rectify = sub.add_parser(
        "rectify", help="raw VR180 video + release npz -> 512x512 rectified left/right mp4"
    )
    rectify.add_argument("--vid", required=True, help="clip id, <video_id>_<first_ts_us>")
    rectify.add_argument("--npz_folder", default="stereo4d_dataset/npz")
    rectify.add_argument("--raw_video_folder", default="stereo4d_dataset/raw")
    rectify.add_argument("--output_folder", default="stereo4d_dataset/processed")
    rectify.add_argument(
        "--output_hfov",
        type=float_range(0, 180, low_open=True, high_open=True),
        default=60.0,
        help="degrees, in (0, 180)",
    )
    rectify.set_defaults(func=_rectify)

    from s4d_ray.engine.command import add_arguments

    run = sub.add_parser(
        "run", help="the main job: process clips into 4D tracks on Ray (local or --address)"
    )
    add_arguments(run)
    run.set_defaults(func=_run)

    view = sub.add_parser(
        "view", help="a Rerun 4D recording (.rrd) of one clip: cameras, tracks, frames, depth"
    )
    view.add_argument("clip", help="release-format npz of the clip (ours or the release; any URI)")
    view.add_argument("--out", required=True, help="the .rrd to write (any URI)")
    view.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    view.add_argument("--rectified", default="", help="folder of <clip_id>-left_rectified.mp4")
    view.add_argument(
        "--dense",
        default="",
        help="engine output root with dense/<clip_id>/ (default: beside the npz)",
    )
    view.add_argument(
        "--max-tracks",
        type=int_range(0, 10_000_000),
        default=3000,
        help="subsample to N tracks (0: all)",
    )
    view.add_argument(
        "--frame-step", type=int_range(1, 1_000_000), default=1, help="log every k-th frame"
    )
    view.add_argument(
        "--trail", type=int_range(0, 1_000_000), default=10, help="frames of history per track"
    )
    view.add_argument("--colour", choices=("depth", "motion"), default="depth")
    view.add_argument("--web", action="store_true", help="then open it in Rerun's web viewer")
    view.add_argument(
        "--serve", action="store_true", help="then serve the web viewer with it (headless)"
    )
    view.add_argument(
        "--port", type=int_range(1, 65535), default=9090, help="web viewer port (--web, --serve)"
    )
    view.set_defaults(func=_view)

    report = sub.add_parser("report", help="rebuild OUTPUT/report.html from a run's outputs")
    report.add_argument("output", help="the job's output folder (any URI)")
    report.add_argument(
        "--ground-truth", default="", help="synthetic data folder (with gt/) for accuracy"
    )
    report.set_defaults(func=_report)

    predict = sub.add_parser(
        "predict", help="DynaDUSt3R on one frame pair: pointmaps + 3D motion (npz) and a PNG"
    )
    predict.add_argument("--checkpoint", required=True, help="DUSt3R/DynaDUSt3R .pth (any URI)")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs=2, metavar=("A", "B"), help="two image files")
    source.add_argument("--video", help="a video; frames --pair I J")
    predict.add_argument(
        "--pair",
        nargs=2,
        type=int_range(0, 10_000_000),
        default=(0, 10),
        metavar=("I", "J"),
        help="0-based frame numbers of the video (--video)",
    )
    predict.add_argument(
        "--time", type=float_range(0.0, 1.0), default=0.5, help="query time in [0, 1]"
    )
    predict.add_argument("--out", required=True, help="output folder (any URI)")
    predict.add_argument(
        "--size",
        type=int_range(16, MAX_INPUT_SIZE),
        default=512,
        help=f"long side of the model input, px (at most {MAX_INPUT_SIZE})",
    )
    predict.add_argument(
        "--max-pixels",
        type=int_range(1, 1 << 31),
        default=None,
        help="refuse input images or video frames with more pixels (default 40000000: "
        "s4d_ray.dynadust3r.inference.MAX_IMAGE_PIXELS)",
    )
    predict.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps"
    )
    predict.set_defaults(func=_predict)

    evaluate = sub.add_parser(
        "eval-dynadust3r", help="3D end-point error of DynaDUSt3R motion on held-out clips"
    )
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--npz", required=True, help="folder or glob of release npz")
    evaluate.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    evaluate.add_argument("--rectified", default="", help="folder of <clip_id>-left_rectified.mp4")
    evaluate.add_argument("--limit", type=int_range(1), default=None, help="at most N clips")
    evaluate.add_argument("--align-scale", action="store_true", help="per-pair LSQ scale")
    evaluate.add_argument("--image-size", type=int_range(16, MAX_INPUT_SIZE), default=512)
    evaluate.add_argument("--pairs-per-clip", type=int_range(1, 10_000), default=16)
    evaluate.add_argument("--min-tracks", type=int_range(0), default=256)
    evaluate.add_argument(
        "--seed", type=int_range(0, 2**63 - 1), default=1, help="pair sampling (training uses 0)"
    )
    evaluate.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps"
    )
    evaluate.add_argument("--out", default="dynadust3r_eval.json", help="JSON result (any URI)")
    evaluate.set_defaults(func=_eval_dynadust3r)

    export = sub.add_parser(
        "export-pointmaps",
        help="engine outputs (run with --dense) -> 4D pointmap windows as WebDataset shards (Ray Data)",
    )
    from s4d_ray.pointmaps.command import add_arguments as add_export_arguments

    add_export_arguments(export)
    export.set_defaults(func=_export_pointmaps)

    eval_pm = sub.add_parser(
        "eval-pointmaps",
        help="Abs Rel, delta<1.25, ATE/RPE of predicted pointmaps vs exported windows",
    )
    eval_pm.add_argument("--pred", required=True, help="shards with <key>.pointmaps.npy [T,H,W,3]")
    eval_pm.add_argument("--ref", required=True, help="export-pointmaps output (or its shards)")
    eval_pm.add_argument("--out", default="pointmaps_eval.json", help="JSON result (any URI)")
    eval_pm.set_defaults(func=_eval_pointmaps)

    t4d = sub.add_parser(
        "tracksto4d", help="TracksTo4D on clips' 2D tracks: cameras, 3D points, movement"
    )
    _add_tracksto4d_arguments(t4d)
    t4d.add_argument("--output", required=True, help="output root (npz/ and parquet/)")
    t4d.set_defaults(func=_tracksto4d)

    t4d_eval = sub.add_parser(
        "eval-tracksto4d", help="TracksTo4D vs metric 3D tracks/poses: Abs Rel, delta, ATE, RPE"
    )
    _add_tracksto4d_arguments(t4d_eval)
    t4d_eval.add_argument("--out", default=None, help="JSON result (any URI)")
    t4d_eval.set_defaults(func=_eval_tracksto4d)

    poses = sub.add_parser(
        "poses",
        help="pose QA: re-estimate release clips' camera poses from their videos and report "
        "agreement (ATE SE(3)/Sim(3), scale, rotation) per clip",
    )
    poses.add_argument("--npz", required=True, help="folder or glob of release npz (any URI)")
    poses.add_argument("--videos", required=True, help="folder of raw VR180 <video_id>.mp4")
    poses.add_argument("--limit", type=int_range(1, None), default=None, help="at most N clips")
    poses.add_argument("--out", default="", help="JSON rows (any URI)")
    poses.set_defaults(func=_poses)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `s4d` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from s4d_ray.errors import report_error

    try:
        return args.func(args)
    except Exception as error:
        return report_error(error, f"s4d {args.command}")


if __name__ == "__main__":
    sys.exit(main())
