"""Which tracks move: the two tests the project uses, side by side.

- `moving_by_extent`: a track whose stored world positions span more than a few cm. Training
  data (DynaDUSt3R, TracksTo4D) uses it on the optimised 3D tracks.
- `moving_by_image_motion`: a track whose 90th-percentile motion displacement exceeds the
  optimiser's dynamic-weight threshold (`track.optimize`: w = sigmoid(p90 - 20) > 0.5). The
  viewer colours tracks by it.
"""

from __future__ import annotations

import numpy as np

MOTION_P90_THRESHOLD_PX = 20.0
"""The optimiser's dynamic-weight threshold, px (the default of
`track.optimize.OptimizerSettings.motion_threshold`)."""


def moving_by_extent(points_world: np.ndarray, threshold_m: float = 0.05) -> np.ndarray:
    """[N] bool: the track's stored world positions [N,T,3] m (NaN = unseen) span more than
    `threshold_m` (the diagonal of their bounding box)."""
    lo, hi = np.fmin.reduce(points_world, axis=1), np.fmax.reduce(points_world, axis=1)
    return np.linalg.norm(np.nan_to_num(hi - lo), axis=-1) > threshold_m


def moving_by_image_motion(
    motion: np.ndarray, stored: np.ndarray, threshold_px: float = MOTION_P90_THRESHOLD_PX
) -> np.ndarray:
    """[N] bool: the 90th percentile of `motion [N,T]` px over the `stored [N,T]` frames
    exceeds `threshold_px`; a track with no such frame is static."""
    values = np.where(stored, np.asarray(motion, np.float64), np.nan)
    has = np.isfinite(values).any(axis=1)
    p90 = np.full(len(values), -np.inf)
    if has.any():
        p90[has] = np.nanpercentile(values[has], 90, axis=1)
    return p90 > threshold_px
