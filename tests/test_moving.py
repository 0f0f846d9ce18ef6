"""The two moving-track tests (`s4d_ray.track.moving`)."""

from __future__ import annotations

import numpy as np

from s4d_ray.track.moving import moving_by_extent, moving_by_image_motion


def test_extent_ignores_unseen_frames_and_uses_the_box_diagonal():
    points = np.zeros((3, 4, 3), np.float32)
    points[1, 3] = [0.03, 0.03, 0.0]  # diagonal 4.2 cm: below 5 cm
    points[2, 3] = [0.04, 0.04, 0.0]  # 5.7 cm
    points[0, 1:] = np.nan  # seen once: no extent
    assert moving_by_extent(points).tolist() == [False, False, True]
    assert moving_by_extent(points, threshold_m=0.04).tolist() == [False, True, True]


def test_image_motion_uses_the_p90_over_stored_frames_only():
    motion = np.array([[0.0] * 9 + [100.0], [30.0] * 10, [30.0] * 10])
    stored = np.ones((3, 10), bool)
    stored[2] = False  # nothing stored: static, not NaN
    # row 0: p90 of nine 0s and one 100 interpolates to 10 px, under the 20 px threshold
    assert moving_by_image_motion(motion, stored).tolist() == [False, True, False]
    assert moving_by_image_motion(motion, stored, threshold_px=5.0).tolist() == [True, True, False]
