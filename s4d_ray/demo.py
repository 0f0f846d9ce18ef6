"""`make demo`: the main job on the embedded default — synthetic VR180 clips, local, CPU only.

Renders a few synthetic clips, rectifies them, and saves a picture a person can look at
(rectified left/right pair with the ground-truth tracks drawn on). Prints what it did and where.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import cv2
import numpy as np

from s4d_ray import fs
from s4d_ray.clip_io import read_clip
from s4d_ray.rectify import LowResolutionWarning, rectify_clip, rectify_to_files
from s4d_ray.synth import SynthConfig, load_ground_truth, synth_dataset


def draw_tracks(
    image: np.ndarray, tracks_2d: np.ndarray, visible: np.ndarray, object_ids: np.ndarray
) -> np.ndarray:
    """Overlay visible track points [K,2] px on `image`, static green, moving objects orange."""
    out = image.copy()
    for (x, y), vis, obj in zip(tracks_2d, visible, object_ids, strict=True):
        if vis:
            colour = (60, 220, 60) if obj == 0 else (255, 140, 0)
            cv2.circle(out, (int(x), int(y)), 2, colour, -1, lineType=cv2.LINE_AA)
    return out


def preview(out_dir: str, clip_id: str) -> str:
    """Save `<out>/preview_<clip>.png`: rectified left (GT tracks drawn) | rectified right."""
    record = read_clip(fs.join(out_dir, "npz", f"{clip_id}.npz"))
    left, right = rectify_clip(record, fs.join(out_dir, "raw", f"{record.video_id}.mp4"))
    gt = load_ground_truth(out_dir, clip_id)
    f = record.num_frames // 2
    panel = np.concatenate(
        [
            draw_tracks(
                left[f], gt["tracks_2d"][:, f], gt["visible"][:, f], gt["track_object_ids"]
            ),
            right[f],
        ],
        axis=1,
    )
    path = fs.join(out_dir, f"preview_{clip_id}.png")
    ok, png = cv2.imencode(".png", panel[..., ::-1])
    assert ok
    fs.write_bytes(path, png.tobytes())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--height", type=int, default=512)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    warnings.simplefilter("ignore", LowResolutionWarning)

    t0 = time.perf_counter()
    clip_ids = synth_dataset(
        args.out, SynthConfig(clips=args.clips, frames=args.frames, height=args.height)
    )
    print(
        f"synth: {len(clip_ids)} clips in {time.perf_counter() - t0:.1f} s -> {args.out}/raw, npz, gt"
    )
    for clip_id in clip_ids:
        t0 = time.perf_counter()
        left, right = rectify_to_files(
            clip_id,
            fs.join(args.out, "npz"),
            fs.join(args.out, "raw"),
            fs.join(args.out, "processed"),
        )
        print(f"rectify: {clip_id} in {time.perf_counter() - t0:.2f} s -> {left}")
    print(f"preview: {preview(args.out, clip_ids[0])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
