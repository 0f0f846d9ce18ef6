"""The lift stage's drift filter: semantic filtering of 2D tracks (sky, static/dynamic
boundary, drifting static points).

Follows the Stereo4D reference (`segmentation.segmentation_main`). Labels are ADE20K DeepLab
predictions at the tracking resolution (0 = background). A track's label at a frame is read at
its position clipped to the image and rounded half to even, as the reference's
`cv2.remap(..., INTER_NEAREST)` on `np.clip(xy, 0, 511)` does for 512×512 maps. A track is
dropped if
  - sky: it is on sky at any visible frame;
  - boundary: the fraction of its visible frames on static labels is strictly between 0 and 1
    (tracks with no visible frame are never boundary);
  - drift: at some visible frame on a static label its motion displacement exceeds 5 px.
The reference gates drift with the lifted validity rather than 2D visibility; the two agree
because `lift.motion_displacement` is 0 wherever the lifted point is invalid.
"""

from __future__ import annotations

import numpy as np

from s4d_ray.track.ade20k import SKY_LABELS, STATIC_LABELS

DRIFT_THRESHOLD_PX = 5.0


def sample_labels(labels: np.ndarray, tracks_2d: np.ndarray) -> np.ndarray:
    """Label [N,T] of each track point: `labels [T,H,W]` at the clipped, rounded `tracks_2d`.

    Non-finite positions read as background (0), like the reference's zero border.
    """
    num_frames, height, width = labels.shape
    if tracks_2d.shape[1] != num_frames:
        raise ValueError(f"tracks_2d {tracks_2d.shape} and labels {labels.shape} differ in T")
    row, col, finite = _pixel_of(tracks_2d, height, width)
    sampled = labels[np.arange(num_frames)[None, :], row, col]
    return np.where(finite, sampled, 0).astype(labels.dtype)


def filter_point_labels(
    point_labels: np.ndarray,
    visible: np.ndarray,
    motion: np.ndarray,
    static_labels: tuple[int, ...] = STATIC_LABELS,
    sky_labels: tuple[int, ...] = SKY_LABELS,
    drift_threshold_px: float = DRIFT_THRESHOLD_PX,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which tracks survive the semantic filter, and why the others do not.

    Args:
        point_labels: [N,T] ADE20K labels at the track points (`sample_labels`; the pipeline
            samples them inside the segmentation actor so that label maps [T,H,W] never
            travel between stages). visible: [N,T] bool. motion: [N,T] px from
            `lift.motion_displacement`.

    Returns:
        keep [N] bool, and reasons {"sky", "boundary", "drift"} → [N] bool (a track may have
        several reasons; keep = none of them).
    """
    return _filter(
        np.isin(point_labels, sky_labels),
        np.isin(point_labels, static_labels),
        visible,
        motion,
        drift_threshold_px,
    )


# --- compact label classes: what the filter (and the tracker's query skipping) needs --------

POINT_SKY, POINT_STATIC = 1, 2
"""Bits of a point class (`point_classes [N,T] uint8`): on sky, on a static label; 0 = other."""


def pack_label_classes(
    labels: np.ndarray,
    static_labels: tuple[int, ...] = STATIC_LABELS,
    sky_labels: tuple[int, ...] = SKY_LABELS,
) -> np.ndarray:
    """Bit planes [2,T,H,ceil(W/8)] uint8 (sky, static) of ADE20K `labels [T,H,W]`.

    All the drift filter reads of a label map is whether a pixel is sky and whether it is
    static, so the segmentation stage ships these two bits per pixel (np.packbits along W,
    big-endian bit order) instead of the label maps: 1/4 of the bytes of uint8 labels.
    """
    planes = np.stack([np.isin(labels, sky_labels), np.isin(labels, static_labels)])
    return np.packbits(planes, axis=-1)


def _pixel_of(xy: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col, finite) of positions `xy [...,2]` px: clipped, rounded half to even (as
    `sample_labels`); non-finite positions map to (0, 0) and finite False."""
    xy = np.asarray(xy, dtype=np.float64)
    finite = np.isfinite(xy).all(axis=-1)
    xy = np.where(finite[..., None], xy, 0.0)
    col = np.rint(np.clip(xy[..., 0], 0, width - 1).astype(np.float32)).astype(np.int64)
    row = np.rint(np.clip(xy[..., 1], 0, height - 1).astype(np.float32)).astype(np.int64)
    return row, col, finite


def _packed_bits(
    packed: np.ndarray, plane: int, frame: np.ndarray, row: np.ndarray, col: np.ndarray
) -> np.ndarray:
    byte = packed[plane, frame, row, col >> 3]
    return ((byte >> (7 - (col & 7))) & 1).astype(bool)


def sample_point_classes(packed: np.ndarray, tracks_2d: np.ndarray, width: int) -> np.ndarray:
    """Class bits [N,T] uint8 (`POINT_SKY | POINT_STATIC`) of tracks [N,T,2] px read from the
    packed planes [2,T,H,ceil(W/8)] of `pack_label_classes`, with `sample_labels`' rule
    (clipped, rounded; non-finite positions read as background, i.e. class 0)."""
    _, num_frames, height, _ = packed.shape
    if tracks_2d.shape[1] != num_frames:
        raise ValueError(f"tracks_2d {tracks_2d.shape} and label planes {packed.shape} differ in T")
    row, col, finite = _pixel_of(tracks_2d, height, width)
    frame = np.arange(num_frames)[None, :]
    sky = _packed_bits(packed, 0, frame, row, col) & finite
    static = _packed_bits(packed, 1, frame, row, col) & finite
    return (sky * POINT_SKY + static * POINT_STATIC).astype(np.uint8)


def sky_at(packed: np.ndarray, frame_index: int, points: np.ndarray, width: int) -> np.ndarray:
    """Whether each of `points [Q,2]` px (x,y) is on sky at `frame_index` [Q] bool."""
    height = packed.shape[2]
    row, col, finite = _pixel_of(points, height, width)
    return _packed_bits(packed, 0, np.full(len(points), frame_index), row, col) & finite


def filter_point_classes(
    point_classes: np.ndarray,
    visible: np.ndarray,
    motion: np.ndarray,
    drift_threshold_px: float = DRIFT_THRESHOLD_PX,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`filter_point_labels` on class bits [N,T] from `sample_point_classes` (same result as
    on the labels they were packed from)."""
    point_classes = np.asarray(point_classes)
    return _filter(
        (point_classes & POINT_SKY) > 0,
        (point_classes & POINT_STATIC) > 0,
        visible,
        motion,
        drift_threshold_px,
    )


def _filter(
    on_sky: np.ndarray,
    on_static: np.ndarray,
    visible: np.ndarray,
    motion: np.ndarray,
    drift_threshold_px: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    visible = np.asarray(visible, dtype=bool)
    sky = (on_sky & visible).any(axis=1)
    visible_count = visible.sum(axis=1)
    static_count = (on_static & visible).sum(axis=1)
    boundary = (static_count > 0) & (static_count < visible_count)
    drift = ((np.asarray(motion) > drift_threshold_px) & visible & on_static).any(axis=1)
    keep = ~(sky | boundary | drift)
    return keep, {"sky": sky, "boundary": boundary, "drift": drift}
