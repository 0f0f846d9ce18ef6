"""Semantic track filter: sky, static/dynamic boundary and drift, one case per reason."""

import numpy as np
import pytest

from s4d_ray.track.ade20k import LABEL_NAMES
from s4d_ray.track.drift_filter import STATIC_LABELS, filter_point_labels, sample_labels

ADE20K_WALL, ADE20K_BUILDING, ADE20K_SKY, ADE20K_ROAD, ADE20K_SIDEWALK, ADE20K_EARTH = (
    LABEL_NAMES.index(name) for name in ("wall", "building", "sky", "road", "sidewalk", "earth")
)

T, H, W = 4, 16, 16
PERSON = 13


def drift_filter(tracks_2d, visible, labels, motion):
    """The engine's path: labels sampled at the track points (segmentation stage), then
    filtered with the motion (lift stage)."""
    return filter_point_labels(sample_labels(labels, tracks_2d), visible, motion)


def test_static_and_sky_label_ids_match_ade20k():
    assert (ADE20K_WALL, ADE20K_BUILDING, ADE20K_SKY) == (1, 2, 3)
    assert (ADE20K_ROAD, ADE20K_SIDEWALK, ADE20K_EARTH) == (7, 12, 14)
    assert set(STATIC_LABELS) == {1, 2, 7, 12, 14}


def test_sampling_rounds_half_to_even_and_clips():
    labels = np.arange(T * H * W, dtype=np.int64).reshape(T, H, W) % 251
    labels = labels.astype(np.uint8)
    tracks = np.array(
        [
            [[2.5, 3.5]] * T,  # rounds to (2, 4)
            [[3.5, 2.49]] * T,  # rounds to (4, 2)
            [[-4.0, 30.0]] * T,  # clipped to (0, H-1)
            [[np.nan, 1.0]] * T,  # non-finite: background
        ]
    )
    got = sample_labels(labels, tracks)
    t = np.arange(T)
    assert (got[0] == labels[t, 4, 2]).all()
    assert (got[1] == labels[t, 2, 4]).all()
    assert (got[2] == labels[t, H - 1, 0]).all()
    assert (got[3] == 0).all()


def scene():
    """Label maps: left half building (static), right half person; top rows sky at frame 2."""
    labels = np.full((T, H, W), PERSON, np.uint8)
    labels[:, :, : W // 2] = ADE20K_BUILDING
    labels[2, :2, :] = ADE20K_SKY
    return labels


def constant_track(x: float, y: float) -> np.ndarray:
    return np.tile(np.array([[x, y]], float), (T, 1))


def test_each_reason():
    labels = scene()
    tracks = np.stack(
        [
            constant_track(3, 8),  # 0 static, no motion: kept
            constant_track(12, 8),  # 1 dynamic all along: kept even with motion
            constant_track(12, 0),  # 2 on sky at frame 2 (person otherwise): sky
            constant_track(12, 0),  # 3 same, but invisible at frame 2: kept
            np.array([[3, 8], [3, 8], [12, 8], [12, 8]], float),  # 4 static→person: boundary
            constant_track(4, 8),  # 5 static with 6 px motion: drift
            constant_track(5, 8),  # 6 static, 6 px motion at an invisible frame: kept
            constant_track(6, 8),  # 7 static, exactly 5 px: kept (strictly greater drifts)
        ]
    )
    visible = np.ones((8, T), bool)
    visible[3, 2] = False
    visible[6, 3] = False
    motion = np.zeros((8, T), np.float32)
    motion[1] = 30.0
    motion[5, 2] = 6.0
    motion[6, 3] = 6.0
    motion[7, 1] = 5.0
    keep, reasons = drift_filter(tracks, visible, labels, motion)
    assert keep.tolist() == [True, True, False, True, False, False, True, True]
    assert np.flatnonzero(reasons["sky"]).tolist() == [2]
    assert np.flatnonzero(reasons["boundary"]).tolist() == [4]
    assert np.flatnonzero(reasons["drift"]).tolist() == [5]
    assert keep.tolist() == (~(reasons["sky"] | reasons["boundary"] | reasons["drift"])).tolist()


def test_boundary_counts_visible_frames_only():
    labels = scene()
    track = np.array([[3, 8], [3, 8], [12, 8], [12, 8]], float)[None]
    visible = np.array([[True, True, False, False]])
    keep, reasons = drift_filter(track, visible, labels, np.zeros((1, T)))
    assert keep[0] and not reasons["boundary"][0]


def test_track_never_visible_is_kept():
    labels = scene()
    track = np.array([[3, 0], [3, 0], [3, 0], [12, 8]], float)[None]
    keep, reasons = drift_filter(track, np.zeros((1, T), bool), labels, np.full((1, T), 50.0))
    assert keep[0] and not any(r[0] for r in reasons.values())


def test_several_reasons_at_once():
    labels = scene()
    track = np.array([[3, 8], [3, 8], [3, 0], [12, 8]], float)[None]  # static, sky, person
    motion = np.array([[0, 9.0, 0, 0]])
    keep, reasons = drift_filter(track, np.ones((1, T), bool), labels, motion)
    assert not keep[0]
    assert reasons["sky"][0] and reasons["boundary"][0] and reasons["drift"][0]


def test_rejects_frame_count_mismatch():
    with pytest.raises(ValueError):
        drift_filter(np.zeros((1, T + 1, 2)), np.ones((1, T + 1), bool), scene(), np.zeros((1, T)))
