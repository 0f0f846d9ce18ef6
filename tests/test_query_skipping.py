"""Queries on sky are not tracked: the kept tracks equal those of tracking everything.

A small ray-traced street clip (sky in view) is rendered with its ground-truth labels and depth;
a `Segmenter`-compatible labeller returns those labels, so the engine's real segmentation,
tracking (Lucas-Kanade) and lift/filter stage bodies run with and without query skipping.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from s4d_ray.engine.clip_stages import lift_and_filter, segment_classes, track_points
from s4d_ray.engine.rows import clip_spec
from s4d_ray.geometry.camera import RectifiedCamera, invert_poses
from s4d_ray.stages.tracking import Tracker
from s4d_ray.synthetic.synth import build_scene, render_rectified
from s4d_ray.track.ade20k import SKY_LABELS, STATIC_LABELS
from s4d_ray.track.drift_filter import (
    filter_point_classes,
    filter_point_labels,
    pack_label_classes,
    sample_labels,
    sample_point_classes,
    sky_at,
)
from s4d_ray.track.lift import lift_tracks, motion_displacement

SIZE, FRAMES, FPS = 128, 20, 30.0
CAMERA = RectifiedCamera(SIZE, 60.0, 0.063)


class GroundTruthLabeller:
    """Segmenter contract (`segment`, `provenance`) serving a clip's ground-truth labels."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def segment(self, frames: np.ndarray) -> np.ndarray:
        assert frames.shape[:3] == self.labels.shape
        return self.labels

    def provenance(self) -> dict:
        return {"backend": "ground_truth", "model": "synthetic labels", "config": {}}


@pytest.fixture(scope="module")
def street_clip() -> dict:
    """20 frames, 128x128, of a synthetic street with sky: frames, labels, depth, cameras."""
    scene = build_scene(np.random.default_rng([7, 0]), 4)
    times = np.arange(FRAMES) / FPS
    views = [render_rectified(scene, t, size=SIZE) for t in times]
    c2w = np.stack([scene.camera2world(t) for t in times]).astype(np.float32)
    return {
        "left": np.stack([v["rgb"] for v in views]),
        "labels": np.stack([v["labels"] for v in views]),
        "depth": np.stack([v["depth"] for v in views]).astype(np.float32),
        "camera2world": c2w,
    }


def _run(clip: dict, skip: bool) -> dict:
    row = clip_spec("street_1", "x.npz", videos_root="v")
    row.update(
        left=clip["left"],
        depth=clip["depth"],
        camera2world=clip["camera2world"],
        camera=CAMERA.to_json(),
    )
    row = segment_classes(row, GroundTruthLabeller(clip["labels"]))
    tracker = Tracker("cpu", query_stride=4, query_frame_interval=5, skip_sky_queries=skip)
    row = track_points(row, tracker)
    return lift_and_filter(row, min_tracks=1)


@pytest.fixture(scope="module")
def skipped_run(street_clip) -> dict:
    return _run(street_clip, skip=True)


def test_skipping_sky_queries_keeps_identical_tracks(street_clip, skipped_run) -> None:
    full, skipped = _run(street_clip, skip=False), skipped_run
    full_meta, skip_meta = json.loads(full["metadata"]), json.loads(skipped["metadata"])
    # the work saved is real: a large share of the grid is on sky
    assert full_meta["queries_skipped"] == 0
    assert skip_meta["queries_skipped"] > 0.2 * skip_meta["queries_candidates"]
    assert skip_meta["queries_query_frames"] < 0.8 * full_meta["queries_query_frames"]
    assert full_meta["tracks_dropped_sky"] > 0
    # ... and the kept tracks are the same tracks. Not bit for bit the same set: a skipped
    # sky track no longer prunes later queries within 1 px of it, so a query next to the sky
    # can be tracked (and kept) that the full run pruned, and that one may prune another.
    # Lucas-Kanade tracks each point independently, so a track is its row of values.
    lost, extra = _difference(full, skipped)
    kept = full_meta["tracks_kept"]
    assert kept > 1000
    assert len(lost) + len(extra) <= 0.002 * kept, (len(lost), len(extra))
    assert skip_meta["tracks_kept"] == kept - len(lost) + len(extra)


def _difference(full: dict, skipped: dict) -> tuple[set, set]:
    """Kept tracks only in `full`, and only in `skipped` (a track = its values row)."""

    def tracks(row: dict) -> set:
        values = zip(row["points"], row["valid"], row["visible"], row["motion"], strict=True)
        return {b"".join(np.ascontiguousarray(a).tobytes() for a in track) for track in values}

    first, second = tracks(full), tracks(skipped)
    return first - second, second - first


def test_label_classes_sample_like_the_label_maps(street_clip) -> None:
    labels = street_clip["labels"]
    packed = pack_label_classes(labels)
    assert packed.nbytes * 4 == labels.nbytes  # two bits per pixel instead of eight
    rng = np.random.default_rng(0)
    tracks = rng.uniform(-3, SIZE + 3, (500, FRAMES, 2)).astype(np.float32)
    tracks[0, 3] = np.nan  # non-finite positions read as background
    classes = sample_point_classes(packed, tracks, SIZE)
    point_labels = sample_labels(labels, tracks)
    np.testing.assert_array_equal(classes & 1 > 0, np.isin(point_labels, SKY_LABELS))
    np.testing.assert_array_equal(classes & 2 > 0, np.isin(point_labels, STATIC_LABELS))
    visible = rng.random((500, FRAMES)) > 0.3
    motion = rng.uniform(0, 8, (500, FRAMES))
    keep_a, why_a = filter_point_classes(classes, visible, motion)
    keep_b, why_b = filter_point_labels(point_labels, visible, motion)
    np.testing.assert_array_equal(keep_a, keep_b)
    for reason in why_b:
        np.testing.assert_array_equal(why_a[reason], why_b[reason])
    queries = tracks[:, 7]
    np.testing.assert_array_equal(
        sky_at(packed, 7, queries, SIZE), np.isin(point_labels[:, 7], SKY_LABELS)
    )


def test_invalid_depth_at_the_query_frame_does_not_seal_a_track(street_clip) -> None:
    """Why no query is skipped for its depth: lift validity is per frame, so a track whose
    query point has no valid depth is still kept when another frame has it."""
    depth = street_clip["depth"].copy()
    depth[np.random.default_rng(1).random(depth.shape) < 0.2] = 0  # holes, new in every frame
    row = clip_spec("street_1", "x.npz", videos_root="v")
    row.update(left=street_clip["left"], camera2world=street_clip["camera2world"])
    row = segment_classes(row, GroundTruthLabeller(street_clip["labels"]))
    row = track_points(row, Tracker("cpu", query_stride=4, query_frame_interval=5))
    w2c = invert_poses(row["camera2world"])
    points, valid = lift_tracks(row["tracks_2d"], row["visible"], depth, w2c, CAMERA)
    motion = motion_displacement(points, valid, w2c, CAMERA)
    keep, _ = filter_point_classes(row["point_classes"], row["visible"], motion)
    keep &= valid.any(axis=1)
    invalid_at_query = ~valid[np.arange(len(valid)), row["query_frame"]]
    assert (keep & invalid_at_query).sum() > 10


def test_track_counts_reach_the_summary(skipped_run) -> None:
    """The per-clip bookkeeping (metadata -> summary row) and the run totals with ratios."""
    from collections import Counter

    from s4d_ray.engine.clip_stages import track_counts
    from s4d_ray.engine.pipeline import with_ratios

    counts = track_counts(skipped_run)
    assert counts["queries_query_frames"] == counts["queries_tracked"] * FRAMES
    assert counts["queries_candidates"] == (
        counts["queries_pruned"] + counts["queries_skipped"] + counts["queries_tracked"]
    )
    assert (
        counts["tracks_tracked"]
        >= counts["tracks_after_depth"]
        >= counts["tracks_after_sky"]
        >= counts["tracks_after_boundary"]
        >= counts["tracks_after_drift"]
        == counts["tracks_kept"]
    )
    # the optimiser's mask then empties some kept tracks: the ratios are per stored track
    clip = Counter({**counts, "tracks_stored": counts["tracks_kept"] // 2})
    totals = with_ratios(clip + clip)
    assert totals["queries_tracked"] == 2 * counts["queries_tracked"]
    assert totals["query_frames_per_stored_track"] == pytest.approx(
        counts["queries_query_frames"] / (counts["tracks_kept"] // 2), rel=1e-3
    )
    assert totals["stored_fraction"] == pytest.approx(
        (counts["tracks_kept"] // 2) / counts["queries_tracked"], rel=1e-3
    )
