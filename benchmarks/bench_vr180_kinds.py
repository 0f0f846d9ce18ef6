"""Own videos of every kind, through the product path (`prepare_video`: probe, cuts,
calibration, poses), against ground truth.

The same synthetic scene (one seed) is written as each kind of file people have — left-right
mp4 with Spherical Video V2 boxes, top-bottom mkv with StereoMode, right-left webm named
`Title [<id>].webm`, a 190° equidistant fisheye with off-centre circles and a sidecar — plus
the wrong-geometry cases that must be refused (a fisheye with nothing declaring it, an
equirect whose field is 166° read as 180°). Printed per kind: the probe's verdict, the
calibration's field scale (1 = the geometry fits), rig error (relative eye rotation vs truth),
camera ATE after SE(3) (cm), scale error after Sim(3) (%), and seconds (render, prepare).

    python -m benchmarks.bench_vr180_kinds [--height 1024] [--frames 40] [--seed 0] [--supersample 2]
        [--kinds lr_mp4,tb_mkv,rl_webm,fisheye,fisheye_bare,equirect166_as_180]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from s4d_ray.geometry.pose_metrics import ate_se3, ate_sim3, relative_eye_rotation_error_deg
from s4d_ray.geometry.rectify import LowResolutionWarning
from s4d_ray.io.clip_io import read_clip
from s4d_ray.io.video_lookup import list_videos
from s4d_ray.ownvideo.clips import ClipConfig
from s4d_ray.ownvideo.prepare import OwnVideoConfig, prepare_video
from s4d_ray.synthetic.synth import SynthConfig, synth_clip

KINDS = {
    "lr_mp4": {"metadata": True},
    "tb_mkv": {"layout": "top-bottom", "container": "mkv", "metadata": True},
    "rl_webm": {"layout": "right-left", "container": "webm", "metadata": True, "title": "Trip"},
    "fisheye": {"projection": "fisheye", "fov_deg": 190.0, "sidecar": True},
    "fisheye_bare": {"projection": "fisheye", "fov_deg": 190.0},
    "equirect166_as_180": {"fov_deg": 166.0},
}


def run_kind(root: Path, kind: str, args: argparse.Namespace) -> dict:
    """Render one kind, prepare it as an own video, score it against the truth."""
    config = SynthConfig(
        clips=1,
        frames=args.frames,
        height=args.height,
        seed=args.seed,
        tracks=50,
        supersample=args.supersample,
        **KINDS[kind],
    )
    out = root / kind
    start = time.perf_counter()
    synth_clip(str(out), config, 0)
    rendered = time.perf_counter() - start
    videos, _ = list_videos(str(out / "raw"))
    [(video_id, uri)] = videos.items()
    start = time.perf_counter()
    outcome = prepare_video(
        uri, video_id, str(out / "out"), OwnVideoConfig(clips=ClipConfig(min_clip_frames=8))
    )
    row = {"kind": kind, "render_s": round(rendered, 1), "prepare_s": 0.0}
    row["prepare_s"] = round(time.perf_counter() - start, 1)
    verdict = outcome.figures.get("video_format")
    row["verdict"] = (
        f"{verdict['layout']} {verdict['projection']} "
        f"{verdict['fov_bounds'][1] - verdict['fov_bounds'][0]:g}°"
        if verdict
        else "-"
    )
    row["field_scale"] = outcome.figures.get("calibration", {}).get("field_scale", float("nan"))
    if outcome.failures:
        failure = outcome.failures[0]
        row["result"] = f"refused at {failure.stage}: {failure.message[:110]}"
        return row
    truth = read_clip(str(next((out / "npz").glob("*.npz"))))
    record = read_clip(outcome.npz_uris[0])
    index = np.searchsorted(record.timestamps, truth.timestamps - 500)
    estimate = record.camera2world[index]
    row["rig_deg"] = relative_eye_rotation_error_deg(record.rectified2rig, truth.rectified2rig)
    row["ate_cm"] = 100 * ate_se3(estimate, truth.camera2world).rmse
    row["scale_pct"] = 100 * ate_sim3(estimate, truth.camera2world).scale_error
    path = np.linalg.norm(np.diff(truth.camera2world[:, :, 3], axis=0), axis=1).sum()
    row["result"] = f"posed ({path:.2f} m path)"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument(
        "--supersample", type=int, default=2, help="rays per pixel per axis (1: aliased)"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", LowResolutionWarning)
    print(
        f"eyes {args.height} lines, {args.frames} frames, seed {args.seed}, "
        f"{args.supersample}x{args.supersample} rays per pixel"
    )
    header = "kind", "verdict", "field", "rig °", "ATE cm", "scale %", "render s", "prep s"
    print(" | ".join(header) + " | result")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            r = run_kind(Path(tmp), kind, args)
            cells = [
                r["kind"],
                r["verdict"],
                f"{r['field_scale']:.4f}",
                f"{r.get('rig_deg', float('nan')):.3f}",
                f"{r.get('ate_cm', float('nan')):.2f}",
                f"{r.get('scale_pct', float('nan')):+.2f}",
                f"{r['render_s']:.0f}",
                f"{r['prepare_s']:.0f}",
                r["result"],
            ]
            print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
