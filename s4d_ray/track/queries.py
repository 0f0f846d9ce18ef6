"""Query points for dense 2D tracking: a jittered grid every few frames, minus redundant queries.

Stereo4D samples a 128x128 grid (stride 4 on 512x512) on every 10th frame, jitters it, and drops
a query when an already-kept track from an earlier query frame is visible within 1 px of it at
that frame. That rule only looks at tracks kept from *earlier* query frames, so a query frame's
candidates can be pruned before they are tracked: `track_with_pruning` tracks only survivors and
returns exactly the tracks that tracking everything and pruning afterwards would keep.

Coordinates are pixels (x, y) in the convention of the trackers (pixel i spans [i, i+1), so its
centre is at i + 0.5).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree

TrackFn = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""`track_fn(frame_index, queries [Q,2] px (x,y)) -> (tracks [Q,T,2] px (x,y), visible [Q,T])`."""
SkipFn = Callable[[int, np.ndarray], np.ndarray]
"""`skip_fn(frame_index, queries [Q,2] px (x,y)) -> [Q] bool`: queries whose tracks a later
filter surely drops (e.g. on sky at their query frame), so they are not tracked at all."""


def query_frames(num_frames: int, interval: int = 10) -> np.ndarray:
    """Frames that receive a query grid: 0, interval, 2*interval, ... < num_frames. [F] int."""
    if interval < 1:
        raise ValueError(f"query frame interval must be >= 1, got {interval}")
    return np.arange(0, num_frames, interval)


def query_grid(
    height: int = 512,
    width: int = 512,
    stride: int = 4,
    rng: np.random.Generator | np.random.RandomState | None = None,
) -> np.ndarray:
    """Jittered query grid of one frame, [Q,2] px (x, y) with integer values, row-major (y, x).

    As the reference: grid nodes at stride//2 + k*stride; each coordinate of each point is shifted
    by its own uniform draw in [(-stride)//2, stride//2), clipped to the image, then truncated to
    an integer. For stride 4 every point lands uniformly on one of the 16 integer positions of its
    4x4 cell. Without `rng` (or with stride 1) the grid is not jittered.
    """
    if stride < 1:
        raise ValueError(f"query stride must be >= 1, got {stride}")
    ys, xs = np.mgrid[stride // 2 : height : stride, stride // 2 : width : stride]
    points = np.stack([ys, xs]).astype(np.float64)
    if stride > 1 and rng is not None:
        points = points + rng.uniform((-stride) // 2, stride // 2, points.shape)
        points[0] = np.clip(points[0], 0, height - 1)
        points[1] = np.clip(points[1], 0, width - 1)
    points = np.trunc(points)
    return np.stack([points[1].ravel(), points[0].ravel()], axis=-1)


def _farther_than(candidates: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """keep [Q] bool: candidates [Q,2] whose nearest neighbour among points [P,2] is > radius."""
    if len(points) == 0 or len(candidates) == 0:
        return np.ones(len(candidates), dtype=bool)
    # Any finite bound above `radius` returns every neighbour at distance <= radius exactly;
    # farther ones come back as inf or as their true distance, both of which are kept.
    distance, _ = cKDTree(points).query(candidates, k=1, distance_upper_bound=2.0 * radius)
    return np.asarray(distance > radius)  # [Q] for [Q,2] candidates (the stubs allow a float)


def track_with_pruning(
    track_fn: TrackFn,
    num_frames: int,
    height: int = 512,
    width: int = 512,
    stride: int = 4,
    frame_interval: int = 10,
    radius: float = 1.0,
    rng: np.random.Generator | np.random.RandomState | None = None,
    skip_fn: SkipFn | None = None,
    counts: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Track a pruned query grid from every query frame; returns (tracks, visible, query_frame).

    Query frames are walked in order; each frame's grid is pruned against the tracks kept so far
    and only the survivors are passed to `track_fn`. Output rows are grouped by query frame in
    that order, grid order within a frame: tracks [N,T,2] px (x,y) float32, visible [N,T] bool,
    query_frame [N] int64. The grids consume `rng` in the same order as drawing all of them up
    front, so the result equals tracking every query and then pruning (the reference order).

    `skip_fn` marks survivors of the pruning that are not tracked (their fate is sealed, see
    `SkipFn`); a skipped query is not a kept track, so it prunes nothing later: the tracks of
    the other queries are unchanged, and a later query that only a skipped track would have
    pruned is tracked (`stages.tracking` measures how rare that is). `counts`, when given,
    receives the query bookkeeping: candidates, pruned, skipped, tracked (queries) and
    query_frames (tracked queries x frames, the tracker's work).
    """
    tally = dict.fromkeys(("candidates", "pruned", "skipped", "tracked"), 0)
    tracks_parts: list[np.ndarray] = []
    visible_parts: list[np.ndarray] = []
    frame_parts: list[np.ndarray] = []
    for frame_index in query_frames(num_frames, frame_interval).tolist():
        candidates = query_grid(height, width, stride, rng)
        visible_now = [
            part_tracks[part_visible[:, frame_index], frame_index]
            for part_tracks, part_visible in zip(tracks_parts, visible_parts, strict=True)
        ]
        points = np.concatenate(visible_now) if visible_now else np.zeros((0, 2))
        keep = _farther_than(candidates, points, radius)
        tally["candidates"] += len(candidates)
        tally["pruned"] += int((~keep).sum())
        if skip_fn is not None and keep.any():
            skip = np.zeros_like(keep)
            skip[keep] = np.asarray(skip_fn(frame_index, candidates[keep]), dtype=bool)
            tally["skipped"] += int(skip.sum())
            keep &= ~skip
        tally["tracked"] += int(keep.sum())
        if not keep.any():
            continue
        tracks, visible = track_fn(frame_index, candidates[keep])
        survivors = int(keep.sum())
        if tracks.shape != (survivors, num_frames, 2) or visible.shape != (survivors, num_frames):
            raise ValueError(
                f"track_fn returned tracks {tracks.shape} and visible {visible.shape} for "
                f"{survivors} queries over {num_frames} frames"
            )
        tracks_parts.append(tracks.astype(np.float32, copy=False))
        visible_parts.append(visible.astype(bool, copy=False))
        frame_parts.append(np.full(survivors, frame_index, dtype=np.int64))
    if counts is not None:
        counts.update(tally, query_frames=tally["tracked"] * num_frames)
    if not frame_parts:
        empty = np.zeros((0, num_frames), dtype=bool)
        return np.zeros((0, num_frames, 2), np.float32), empty, np.zeros(0, np.int64)
    return np.concatenate(tracks_parts), np.concatenate(visible_parts), np.concatenate(frame_parts)
