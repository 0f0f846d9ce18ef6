"""Per-clip quality figures: one flat row of numbers per clip, stored beside the clip's fields in
the Parquet shards (filter clips with pandas or Ray Data) and plotted by the run report.

    num_frames, num_tracks                    int
    tracks_empty                              int   tracks with no stored point (length 0)
    tracks_tracked                            int   2D tracks before lifting and filtering (-1: unknown)
    tracks_kept_fraction                      float tracks stored / tracks tracked (NaN: unknown)
    valid_depth_fraction                      float pixels with valid stereo depth, all frames (NaN: unknown)
    median_track_length                       float stored frames per track
    median_depth_m, p10_depth_m, p90_depth_m  float camera depth of the stored track points, m
    depth_histogram                           int64 [len(DEPTH_HISTOGRAM_EDGES_M) - 1] point counts

"Unknown" means the npz has no `metadata` extra (e.g. an official release clip).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from s4d_ray.io.clip_io import ClipRecord

DEPTH_HISTOGRAM_EDGES_M = tuple(float(x) for x in np.geomspace(0.25, 32.0, 22).round(4))
"""Log-spaced bin edges (m) of `depth_histogram`; points outside fall in the end bins."""

QA_COLUMNS = (
    "num_frames",
    "num_tracks",
    "tracks_empty",
    "tracks_tracked",
    "tracks_kept_fraction",
    "valid_depth_fraction",
    "median_track_length",
    "median_depth_m",
    "p10_depth_m",
    "p90_depth_m",
    "depth_histogram",
)


def point_depths(record: ClipRecord) -> np.ndarray:
    """Camera depth (m) [L] of every stored track point in its own frame's camera."""
    if not len(record.track_indices):
        return np.zeros(0)
    w2c = record.world2camera().astype(np.float64)
    frames = np.asarray(record.track_indices, np.int64)
    points = np.asarray(record.track_coordinates, np.float64)
    return np.einsum("lj,lj->l", w2c[frames, 2, :3], points) + w2c[frames, 2, 3]


def clip_qa(record: ClipRecord) -> dict[str, Any]:
    """The QA figures of one clip (see the module docstring)."""
    metadata: dict[str, Any] = {}
    if "metadata" in record.extras:
        try:
            metadata = json.loads(str(record.extras["metadata"]))
        except ValueError:
            metadata = {}
    tracked = int(metadata.get("tracks_tracked", -1))
    depth = point_depths(record)
    counts, _ = np.histogram(
        np.clip(depth, DEPTH_HISTOGRAM_EDGES_M[0], DEPTH_HISTOGRAM_EDGES_M[-1]),
        bins=DEPTH_HISTOGRAM_EDGES_M,
    )

    def percentile(q: float) -> float:
        return float(np.percentile(depth, q)) if depth.size else float("nan")

    return {
        "num_frames": record.num_frames,
        "num_tracks": record.num_tracks,
        "tracks_empty": int(np.sum(np.asarray(record.track_lengths) == 0)),
        "tracks_tracked": tracked,
        "tracks_kept_fraction": record.num_tracks / tracked if tracked > 0 else float("nan"),
        "valid_depth_fraction": float(metadata.get("valid_depth_fraction", float("nan"))),
        "median_track_length": float(np.median(record.track_lengths)) if record.num_tracks else 0.0,
        "median_depth_m": percentile(50),
        "p10_depth_m": percentile(10),
        "p90_depth_m": percentile(90),
        "depth_histogram": counts.astype(np.int64),
    }
