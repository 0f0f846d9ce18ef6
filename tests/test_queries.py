"""Query grid, redundant-query pruning, and prune-before-tracking vs the reference order."""

from __future__ import annotations

import numpy as np
import pytest

from s4d_ray.track.queries import _farther_than, query_frames, query_grid, track_with_pruning


def prune_queries(candidates, kept_tracks, kept_visible, frame_index, radius=1.0):
    """keep [Q] bool as `track_with_pruning` decides it: candidates farther than `radius` from
    every kept track visible at `frame_index` (its own test of `_farther_than`)."""
    return _farther_than(candidates, kept_tracks[kept_visible[:, frame_index], frame_index], radius)


def reference_style_grid(
    height: int, width: int, stride: int, legacy: np.random.RandomState
) -> np.ndarray:
    """The Stereo4D sampling rule written out (it draws from numpy's legacy RNG), as (x, y)."""
    points = np.mgrid[stride // 2 : height : stride, stride // 2 : width : stride]
    points = points + legacy.uniform(-stride // 2, stride // 2, points.shape)
    points[0] = np.clip(points[0], 0, height - 1)
    points[1] = np.clip(points[1], 0, width - 1)
    points = points.transpose(1, 2, 0).reshape(-1, 2).astype(np.int32)
    return points[:, ::-1].astype(np.float64)


def brute_force_keep(candidates, kept_tracks, kept_visible, frame_index, radius):
    points = kept_tracks[kept_visible[:, frame_index], frame_index]
    if len(points) == 0:
        return np.ones(len(candidates), dtype=bool)
    distance = np.sqrt(((candidates[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    return distance.min(axis=1) > radius


def test_grid_is_128_by_128_on_512_with_stride_4() -> None:
    plain = query_grid(512, 512, stride=4)
    assert plain.shape == (128 * 128, 2)
    assert np.array_equal(np.unique(plain[:, 0]), np.arange(2, 512, 4))
    assert np.array_equal(plain[:128, 1], np.full(128, 2.0))  # row-major: x varies fastest
    jittered = query_grid(512, 512, stride=4, rng=np.random.default_rng(0))
    assert jittered.shape == (128 * 128, 2)
    cell = plain // 4
    assert np.array_equal(jittered // 4, cell)  # each point stays in its own 4x4 cell
    assert np.array_equal(jittered, np.round(jittered))  # integer pixel coordinates
    offsets = jittered - 4 * cell
    counts = np.unique(offsets[:, 0] * 4 + offsets[:, 1], return_counts=True)[1]
    assert len(counts) == 16 and counts.min() > 0.8 * len(jittered) / 16  # uniform over the cell
    assert np.mean(offsets[:, 0] == offsets[:, 1]) < 0.5  # x and y jittered independently
    assert query_grid(512, 512, stride=8).shape == (64 * 64, 2)


@pytest.mark.parametrize(("height", "width", "stride"), [(512, 512, 4), (48, 40, 5), (30, 17, 3)])
def test_grid_matches_reference_sampling_rule(height: int, width: int, stride: int) -> None:
    expected = reference_style_grid(height, width, stride, np.random.RandomState(7))
    got = query_grid(height, width, stride, rng=np.random.RandomState(7))
    assert np.array_equal(got, expected)
    assert got[:, 0].min() >= 0 and got[:, 0].max() <= width - 1
    assert got[:, 1].min() >= 0 and got[:, 1].max() <= height - 1


def test_query_frames_every_tenth() -> None:
    assert query_frames(200).tolist() == list(range(0, 200, 10))
    assert query_frames(21).tolist() == [0, 10, 20]
    with pytest.raises(ValueError):
        query_frames(10, 0)


def test_prune_matches_brute_force_including_exact_radius() -> None:
    rng = np.random.default_rng(3)
    num_tracks, num_frames, frame_index = 400, 6, 4
    kept_tracks = rng.uniform(0, 40, (num_tracks, num_frames, 2)).astype(np.float32)
    kept_visible = rng.random((num_tracks, num_frames)) < 0.7
    # Integer positions make exact 1 px and sqrt(2) px distances common.
    kept_tracks[:200] = np.round(kept_tracks[:200])
    candidates = query_grid(40, 40, stride=2, rng=rng)
    keep = prune_queries(candidates, kept_tracks, kept_visible, frame_index, radius=1.0)
    expected = brute_force_keep(candidates, kept_tracks, kept_visible, frame_index, 1.0)
    assert np.array_equal(keep, expected)
    assert 0 < keep.sum() < len(keep)
    for radius in (0.5, 2.0, 3.7):
        assert np.array_equal(
            prune_queries(candidates, kept_tracks, kept_visible, frame_index, radius),
            brute_force_keep(candidates, kept_tracks, kept_visible, frame_index, radius),
        )


def test_prune_is_strict_and_ignores_invisible_tracks() -> None:
    kept_tracks = np.array([[[10.0, 10.0], [20.0, 20.0]], [[30.0, 30.0], [5.0, 5.0]]])
    kept_visible = np.array([[True, True], [True, False]])
    candidates = np.array([[21.0, 20.0], [21.5, 20.0], [5.0, 5.0], [20.5, 20.5]])
    keep = prune_queries(candidates, kept_tracks, kept_visible, frame_index=1)
    # exactly 1 px: dropped; 1.5 px: kept; on an invisible track: kept; 0.71 px: dropped.
    assert keep.tolist() == [False, True, True, False]
    nothing_kept = prune_queries(candidates, np.zeros((0, 2, 2)), np.zeros((0, 2), bool), 1)
    assert nothing_kept.all()


def analytic_track_fn(num_frames: int, height: int, width: int):
    """Deterministic tracker: a swirling motion field, an occluding disk, and the image border.

    Each query's trajectory depends only on the query itself, as with TAPIR.
    """
    times = np.arange(num_frames)
    calls: list[int] = []

    def track(frame_index: int, queries: np.ndarray):
        calls.append(len(queries))
        x0, y0 = queries[:, 0:1], queries[:, 1:2]
        dt = times[None, :] - frame_index
        vx = 0.9 + 0.02 * (y0 - height / 2)
        vy = 0.4 - 0.015 * (x0 - width / 2)
        x = x0 + vx * dt + 0.3 * np.sin(0.2 * dt)
        y = y0 + vy * dt
        disk_x, disk_y = 10 + 1.5 * times, 30 + 0.5 * times
        occluded = (x - disk_x) ** 2 + (y - disk_y) ** 2 < 10.0**2
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        visible = inside & ~occluded
        visible[:, frame_index] = True
        return np.stack([x, y], axis=-1).astype(np.float32), visible

    return track, calls


def reference_order(track_fn, num_frames, height, width, stride, interval, radius, rng):
    """Stereo4D order: grids for all query frames, track everything, then prune (brute force)."""
    frames = query_frames(num_frames, interval)
    grids = [query_grid(height, width, stride, rng) for _ in frames]
    query_frame = np.concatenate([np.full(len(g), f) for f, g in zip(frames, grids, strict=True)])
    queries = np.concatenate(grids)
    results = [track_fn(int(f), g) for f, g in zip(frames, grids, strict=True)]
    tracks = np.concatenate([r[0] for r in results])
    visible = np.concatenate([r[1] for r in results])
    good = np.zeros(len(queries), dtype=bool)
    for frame_index in frames:
        ids = np.flatnonzero(query_frame == frame_index)
        good[ids] = brute_force_keep(queries[ids], tracks[good], visible[good], frame_index, radius)
    return tracks[good], visible[good], query_frame[good]


@pytest.mark.parametrize("seed", [0, 1])
def test_pruning_before_tracking_equals_tracking_then_pruning(seed: int) -> None:
    num_frames, height, width, stride, interval = 41, 64, 72, 4, 10
    track_fn, calls = analytic_track_fn(num_frames, height, width)
    tracks, visible, query_frame = track_with_pruning(
        track_fn, num_frames, height, width, stride, interval, 1.0, np.random.default_rng(seed)
    )
    early_calls = list(calls)
    expected = reference_order(
        track_fn, num_frames, height, width, stride, interval, 1.0, np.random.default_rng(seed)
    )
    assert np.array_equal(tracks, expected[0])
    assert np.array_equal(visible, expected[1])
    assert np.array_equal(query_frame, expected[2])
    per_frame = (height // stride) * (width // stride)
    assert early_calls[0] == per_frame  # nothing to prune against on the first query frame
    assert len(early_calls) == 5 and all(n < per_frame for n in early_calls[1:])
    assert sum(early_calls) == len(tracks)  # only survivors were ever tracked
    assert tracks.dtype == np.float32 and visible.dtype == bool and query_frame.dtype == np.int64
    assert np.all(np.diff(query_frame) >= 0)


def test_track_fn_with_wrong_shapes_is_rejected() -> None:
    def bad_track_fn(frame_index, queries):
        return np.zeros((len(queries), 3, 2)), np.zeros((len(queries), 3), bool)

    with pytest.raises(ValueError, match="track_fn returned"):
        track_with_pruning(bad_track_fn, 5, 16, 16, stride=4)
