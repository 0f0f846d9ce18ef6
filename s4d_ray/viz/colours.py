"""One depth colour scale for every picture (viewer, demo preview, report): near red, far blue.

Log-spaced between `DEPTH_NEAR_M` and `DEPTH_FAR_M` (the lift stage's 20 m cut-off), so the
accuracy bands (< 2, 2-5, 5-10, 10-20 m) get similar widths of the colour bar.
"""

from __future__ import annotations

import numpy as np

DEPTH_NEAR_M = 1.0
DEPTH_FAR_M = 20.0
DEPTH_COLORMAP = "turbo_r"
DEPTH_TICKS_M = (1, 2, 5, 10, 20)
MOVING_RGB = (255, 64, 32)
STATIC_RGB = (64, 160, 255)


def depth_norm(near: float = DEPTH_NEAR_M, far: float = DEPTH_FAR_M):
    """The matplotlib LogNorm of the depth scale (for colour bars)."""
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=near, vmax=far, clip=True)


def depth_colours(
    depth_m: np.ndarray, near: float = DEPTH_NEAR_M, far: float = DEPTH_FAR_M
) -> np.ndarray:
    """RGB uint8 [...,3] of `depth_m [...]` on the shared log scale (NaN/<= 0: grey)."""
    from matplotlib import colormaps

    depth = np.asarray(depth_m, dtype=np.float64)
    ok = np.isfinite(depth) & (depth > 0)
    position = np.zeros(depth.shape)
    position[ok] = (np.log(np.clip(depth[ok], near, far)) - np.log(near)) / np.log(far / near)
    rgb = (colormaps[DEPTH_COLORMAP](position)[..., :3] * 255).round().astype(np.uint8)
    rgb[~ok] = 128
    return rgb
