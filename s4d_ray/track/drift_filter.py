"""Stage 4: semantic filtering of 2D tracks (sky, static/dynamic boundary, drifting static points).

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
    xy = np.asarray(tracks_2d, dtype=np.float64)
    finite = np.isfinite(xy).all(axis=-1)
    xy = np.where(finite[..., None], xy, 0.0)
    col = np.rint(np.clip(xy[..., 0], 0, width - 1).astype(np.float32)).astype(np.int64)
    row = np.rint(np.clip(xy[..., 1], 0, height - 1).astype(np.float32)).astype(np.int64)
    sampled = labels[np.arange(num_frames)[None, :], row, col]
    return np.where(finite, sampled, 0).astype(labels.dtype)


def drift_filter(
    tracks_2d: np.ndarray,
    visible: np.ndarray,
    labels: np.ndarray,
    motion: np.ndarray,
    static_labels: tuple[int, ...] = STATIC_LABELS,
    sky_labels: tuple[int, ...] = SKY_LABELS,
    drift_threshold_px: float = DRIFT_THRESHOLD_PX,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which tracks survive the semantic filter, and why the others do not.

    Args:
        tracks_2d: [N,T,2] px (x, y). visible: [N,T] bool.
        labels: [T,H,W] uint8 ADE20K labels. motion: [N,T] px from `lift.motion_displacement`.

    Returns:
        keep [N] bool, and reasons {"sky", "boundary", "drift"} → [N] bool (a track may have
        several reasons; keep = none of them).
    """
    return filter_point_labels(
        sample_labels(labels, tracks_2d),
        visible,
        motion,
        static_labels=static_labels,
        sky_labels=sky_labels,
        drift_threshold_px=drift_threshold_px,
    )


def filter_point_labels(
    point_labels: np.ndarray,
    visible: np.ndarray,
    motion: np.ndarray,
    static_labels: tuple[int, ...] = STATIC_LABELS,
    sky_labels: tuple[int, ...] = SKY_LABELS,
    drift_threshold_px: float = DRIFT_THRESHOLD_PX,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`drift_filter` on labels already sampled at the track points, `point_labels [N,T]`.

    The pipeline samples labels inside the segmentation actor so that label maps
    [T,H,W] never travel between stages.
    """
    visible = np.asarray(visible, dtype=bool)
    on_static = np.isin(point_labels, static_labels)
    on_sky = np.isin(point_labels, sky_labels)

    sky = (on_sky & visible).any(axis=1)
    visible_count = visible.sum(axis=1)
    static_count = (on_static & visible).sum(axis=1)
    boundary = (static_count > 0) & (static_count < visible_count)
    drift = ((np.asarray(motion) > drift_threshold_px) & visible & on_static).any(axis=1)
    keep = ~(sky | boundary | drift)
    return keep, {"sky": sky, "boundary": boundary, "drift": drift}
