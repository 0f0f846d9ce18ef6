"""Tracking work per clip, and BootsTAP refinement speed: before/after the tracking-cost work, side by side.

1. Query·frames tracked per clip with and without skipping queries on sky at their query frame
   (labels ship from segmentation, which now runs before tracking), on ray-traced synthetic
   street clips (the `s4d synth` scene: moving rig, sky in view) and on a pan-only clip (same
   world, the rig only turns). Lucas–Kanade tracks; a ground-truth labeller stands in for
   DeepLab; ground-truth depth. Also the kept tracks of both runs and their difference
   (skipped sky tracks no longer prune later queries; see `track.queries.track_with_pruning`).
2. BootsTAP (random weights, real architecture) on CPU: query·frames/s of the whole tracking
   call and of the refinement alone, plain vs fused refinement, interleaved in one process;
   the largest output difference between the two.
3. Precision: what bf16 autocast (CPU) changes in BootsTAP tracks and visibility on random
   weights, against fp32.

    python -m benchmarks.bench_tracking                 # all three, ~10 min on a busy 2-core box
    python -m benchmarks.bench_tracking --quick         # smaller clips and fewer repeats
    python -m benchmarks.bench_tracking --only queries  # or: bootstap, precision
    python -m benchmarks.bench_tracking --only bootstap --tapir-frames 24  # longer tracks

Prints one JSON object per measurement (CPU seconds: process time; steadier than wall time on
a shared machine) and writes them all to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from s4d_ray.engine.clip_stages import lift_and_filter, segment_classes, track_points
from s4d_ray.engine.rows import clip_spec
from s4d_ray.geometry.camera import RELEASE_CAMERA
from s4d_ray.stages.tracking import Tracker
from s4d_ray.synthetic.synth import build_scene, render_rectified


class GroundTruthLabeller:
    """Segmenter contract (`segment`, `provenance`) serving a synthetic clip's true labels."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def segment(self, frames: np.ndarray) -> np.ndarray:
        return self.labels

    def provenance(self) -> dict:
        return {"backend": "ground_truth", "model": "synthetic labels", "config": {}}


def render_clip(seed: int, frames: int, size: int, pan_only: bool = False) -> dict:
    """Left frames, labels, depth (m, 0 = sky) and camera2world of one synthetic clip."""
    scene = build_scene(np.random.default_rng([seed, 0]), 4)
    if pan_only:  # the rig stays put and yaws ~3 deg/s
        scene = dataclasses.replace(
            scene,
            camera_speed=np.zeros(3),
            camera_sway=np.zeros(3),
            rotation_amplitude_deg=np.array([30.0, 0.0, 0.0]),
            rotation_rates=np.array([0.1, 0.0, 0.0]),
        )
    times = np.arange(frames) / 30.0
    views = [render_rectified(scene, t, size=size) for t in times]
    return {
        "left": np.stack([v["rgb"] for v in views]),
        "labels": np.stack([v["labels"] for v in views]),
        "depth": np.stack([v["depth"] for v in views]).astype(np.float32),
        "camera2world": np.stack([scene.camera2world(t) for t in times]).astype(np.float32),
    }


def run_clip(clip: dict, skip: bool, stride: int, interval: int) -> tuple[dict, dict, float]:
    """Segmentation (ground truth) -> tracking -> lift/filter; returns (row, counts, track s)."""
    row = clip_spec("bench_1", "x.npz", videos_root="v")
    camera = dataclasses.replace(RELEASE_CAMERA, size_px=clip["left"].shape[2])
    row.update(
        left=clip["left"],
        depth=clip["depth"],
        camera2world=clip["camera2world"],
        camera=camera.to_json(),
    )
    row = segment_classes(row, GroundTruthLabeller(clip["labels"]))
    packed_bytes = int(row["label_classes"].nbytes)
    tracker = Tracker(
        "cpu", query_stride=stride, query_frame_interval=interval, skip_sky_queries=skip
    )
    start = time.process_time()
    row = track_points(row, tracker)
    seconds = time.process_time() - start
    point_bytes = int(row["point_classes"].nbytes)
    row = lift_and_filter(row, min_tracks=1)
    counts = {k: v for k, v in json.loads(row["metadata"]).items() if isinstance(v, int)}
    counts.update(label_classes_bytes=packed_bytes, point_classes_bytes=point_bytes)
    return row, counts, seconds


def _track_rows(row: dict) -> set[bytes]:
    values = zip(row["points"], row["valid"], row["visible"], row["motion"], strict=True)
    return {b"".join(np.ascontiguousarray(a).tobytes() for a in track) for track in values}


def bench_queries(args) -> list[dict]:
    results = []
    clips = [(f"street_seed{s}", s, False) for s in range(args.street_clips)]
    clips.append(("pan_only_seed0", 0, True))
    for name, seed, pan in clips:
        clip = render_clip(seed, args.frames, args.size, pan_only=pan)
        full, full_counts, full_s = run_clip(clip, False, args.stride, args.interval)
        skip, skip_counts, skip_s = run_clip(clip, True, args.stride, args.interval)
        before, after = _track_rows(full), _track_rows(skip)
        result = {
            "measure": "query_frames_per_clip",
            "clip": name,
            "frames": args.frames,
            "size": args.size,
            "stride": args.stride,
            "sky_fraction": round(float(np.isin(clip["labels"], (3,)).mean()), 4),
            "label_map_bytes_uint8": int(clip["labels"].nbytes),
            "label_classes_bytes": skip_counts["label_classes_bytes"],
            "point_classes_bytes": skip_counts["point_classes_bytes"],
            "queries_tracked_before": full_counts["queries_tracked"],
            "queries_tracked_after": skip_counts["queries_tracked"],
            "query_frames_before": full_counts["queries_query_frames"],
            "query_frames_after": skip_counts["queries_query_frames"],
            "query_frames_ratio": round(
                full_counts["queries_query_frames"] / max(skip_counts["queries_query_frames"], 1),
                3,
            ),
            "lk_cpu_s_before": round(full_s, 2),
            "lk_cpu_s_after": round(skip_s, 2),
            "tracks_kept_before": full_counts["tracks_kept"],
            "tracks_kept_after": skip_counts["tracks_kept"],
            "kept_only_before": len(before - after),
            "kept_only_after": len(after - before),
            "counts_after": {k: v for k, v in skip_counts.items() if k.startswith("tracks_")},
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def _bootstap_setup(frames: int, size: int, queries: int):
    import torch

    from s4d_ray.models.tapir import TAPIR

    torch.manual_seed(0)
    model = TAPIR().eval()
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(1, frames, size, size, 3, generator=gen) * 2 - 1
    query_points = torch.cat(
        [
            torch.randint(0, frames, (1, queries, 1), generator=gen).float(),
            torch.rand(1, queries, 2, generator=gen) * size,
        ],
        dim=-1,
    )
    return model, video, query_points


def bench_bootstap(args) -> list[dict]:
    import torch

    model, video, query_points = _bootstap_setup(args.tapir_frames, args.tapir_size, 64)
    refine_seconds = {True: 0.0, False: 0.0}
    plain_refine = model._refine

    def timed_refine(*a, **k):
        start = time.process_time()
        out = plain_refine(*a, **k)
        refine_seconds[model.fused_refinement] += time.process_time() - start
        return out

    model._refine = timed_refine
    total = {True: 0.0, False: 0.0}
    outputs = {}
    with torch.inference_mode():
        grids = model.get_feature_grids(video)
        for _ in range(args.repeats):
            for fused in (False, True):
                model.set_fused_refinement(fused)
                start = time.process_time()
                outputs[fused] = model.track_with_grids(grids, query_points, 64)
                total[fused] += time.process_time() - start
    query_frames = 64 * args.tapir_frames * args.repeats
    diff = {
        key: float(
            (outputs[True][key] - outputs[False][key]).abs().max() / outputs[False][key].abs().max()
        )
        for key in ("tracks", "occlusion", "expected_dist")
    }
    result = {
        "measure": "bootstap_cpu",
        "threads": torch.get_num_threads(),
        "frames": args.tapir_frames,
        "video": args.tapir_size,
        "refinement_passes": model.num_pips_iter * (len(grids.resolutions) - 1),
        "query_frames_per_s_plain": round(query_frames / total[False], 1),
        "query_frames_per_s_fused": round(query_frames / total[True], 1),
        "refinement_query_frames_per_s_plain": round(query_frames / refine_seconds[False], 1),
        "refinement_query_frames_per_s_fused": round(query_frames / refine_seconds[True], 1),
        "refinement_speedup": round(refine_seconds[False] / refine_seconds[True], 3),
        "max_relative_difference": diff,
    }
    print(json.dumps(result), flush=True)
    return [result]


def bench_precision(args) -> list[dict]:
    """fp32 vs bf16 through the engine's BootsTAP backend (autocast, grids cast once)."""
    from s4d_ray.stages.tracking import TapirBackend

    model, _, _ = _bootstap_setup(args.tapir_frames, args.tapir_size, 64)
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (args.tapir_frames, args.tapir_size, args.tapir_size, 3))
    frames = frames.astype(np.uint8)
    queries = rng.integers(0, args.tapir_size, (64, 2)).astype(np.float32)
    outputs, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        backend = TapirBackend(model, "cpu", precision, 64, resolution=args.tapir_size)
        start = time.process_time()
        outputs[precision] = backend(frames)(0, queries)
        seconds[precision] = round(time.process_time() - start, 2)
    (tracks_a, vis_a), (tracks_b, vis_b) = outputs["fp32"], outputs["bf16"]
    track_error = np.linalg.norm(tracks_a - tracks_b, axis=-1)
    result = {
        "measure": "bootstap_bf16_vs_fp32_random_weights",
        "frames": args.tapir_frames,
        "video": args.tapir_size,
        "cpu_s": seconds,
        "track_px_median": round(float(np.median(track_error)), 4),
        "track_px_p99": round(float(np.quantile(track_error, 0.99)), 4),
        "track_px_max": round(float(track_error.max()), 4),
        "visibility_flips": round(float((vis_a != vis_b).mean()), 5),
        "visible_fraction_fp32": round(float(vis_a.mean()), 4),
    }
    print(json.dumps(result), flush=True)
    return [result]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("queries", "bootstap", "precision"))
    parser.add_argument("--out", default="bench_tracking.json")
    parser.add_argument(
        "--tapir-frames", type=int, help="frames of the BootsTAP runs (default 8; 4 with --quick)"
    )
    args = parser.parse_args()
    args.street_clips = 1 if args.quick else 2
    args.frames = 20 if args.quick else 40
    args.size = 128 if args.quick else 256
    args.stride = 4
    args.interval = 10
    args.tapir_frames = args.tapir_frames or (4 if args.quick else 8)
    args.tapir_size = 256
    args.repeats = 1 if args.quick else 3

    import torch

    torch.set_num_threads(1)  # steadier on a shared machine; the ratio is what matters
    results = {"load_average": os.getloadavg()}
    runs = {"queries": bench_queries, "bootstap": bench_bootstap, "precision": bench_precision}
    for name, run in runs.items():
        if args.only in (None, name):
            results[name] = run(args)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
