"""Depth from stereo flow: exact metric depth, forward-backward and vertical-flow checks."""

import math

import numpy as np
import pytest

from s4d_ray.geometry.camera import RectifiedCamera, focal_length_px
from s4d_ray.track.depth import depth_edge_mask, depth_from_flow, warp_backward_flow

T, H, W = 2, 24, 32
CAMERA = RectifiedCamera(W, 60.0, 0.063)


def constant_flows(disparity_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Consistent left→right / right→left flows of a fronto-parallel plane."""
    fwd = np.zeros((T, H, W, 2), np.float32)
    bwd = np.zeros((T, H, W, 2), np.float32)
    fwd[..., 0] = -disparity_px
    bwd[..., 0] = disparity_px
    return fwd, bwd


def test_focal_length_of_60_degrees():
    assert focal_length_px(512, 60.0) == pytest.approx(256 * math.sqrt(3))


def test_constant_disparity_gives_exact_metric_depth():
    fwd, bwd = constant_flows(4.0)
    depth, valid = depth_from_flow(fwd, bwd, CAMERA)
    expected = (W / 2 / math.tan(math.radians(30))) * 0.063 / 4.0
    interior = (slice(None), slice(None), slice(6, None))  # x - 4 ± 2 inside the right view
    assert depth.dtype == np.float32 and valid.dtype == np.bool_
    assert valid[interior].all()
    np.testing.assert_allclose(depth[interior], expected, rtol=1e-6)


def test_bwd_samples_leaving_the_image_read_zero_and_fail_the_check():
    fwd, bwd = constant_flows(4.0)
    _, valid = depth_from_flow(fwd, bwd, CAMERA)
    # x + flow < -2 at x <= 1: bicubic taps are all outside → warped bwd flow is 0 → error 4 px.
    assert not valid[:, :, :2].any()


def test_forward_backward_inconsistency_invalidates():
    fwd, bwd = constant_flows(4.0)
    bwd[0, 10:14, 6:20, 0] += 3.0  # right-view pixels that the left view maps onto
    depth, valid = depth_from_flow(fwd, bwd, CAMERA)
    # left x maps to right x - 4, so left columns 10..23 (away from the bicubic seam) fail
    assert not valid[0, 10:14, 11:23].any()
    assert (depth[0, 10:14, 11:23] == 0).all()
    assert valid[0, :8, 8:].all() and valid[1, :, 8:].all()


def test_small_fb_error_and_vertical_flow_thresholds():
    fwd, bwd = constant_flows(4.0)
    bwd[0, ..., 1] = -0.9  # fb error 0.9 px with fwd y = 0: still valid
    fwd[1, 5, 10, 1] = 1.01  # vertical flow above 1 px
    bwd[1, 5, 6, 1] = -1.01  # keep its fb check consistent at that pixel
    _, valid = depth_from_flow(fwd, bwd, CAMERA)
    assert valid[0, :, 8:].all()
    assert not valid[1, 5, 10]
    # its 4-neighbours lose their rim to the floating-point check; two pixels away is valid
    assert not valid[1, 4, 10] and not valid[1, 5, 11]
    assert valid[1, 3, 10] and valid[1, 5, 12]


def test_floating_points_on_depth_edges_are_removed():
    """Reference `gradient_check_mask_relative(depth, 0.03)`: relative central differences."""
    depth = np.full((1, 6, 8), 5.0, np.float32)
    depth[0, :, 4:] = 5.2  # a 4% step between columns 3 and 4
    depth[0, 0, 0] = 5.1  # a 2% bump: below the threshold
    mask = depth_edge_mask(depth)
    assert mask[0, :, 3].all() and mask[0, :, 4].all()
    assert not mask[0, :, :3].any() and not mask[0, :, 5:].any()
    depth[0, 2, 6] = 0.0  # invalid pixels themselves are never marked
    assert not depth_edge_mask(depth)[0, 2, 6] and depth_edge_mask(depth)[0, 2, 5]


def test_depth_range_limits():
    fwd, bwd = constant_flows(0.0)  # zero disparity: infinite depth
    fwd[0, :, :, 0] = 2.0  # rightward flow: negative disparity, clamped to 0
    bwd[0, :, :, 0] = -2.0
    depth, valid = depth_from_flow(fwd, bwd, CAMERA)
    assert not valid.any() and (depth == 0).all()

    fx_b = focal_length_px(W, 60.0) * 0.063
    disparity_at_20m = fx_b / 20.0
    fwd, bwd = constant_flows(disparity_at_20m * 0.99)  # just beyond 20 m
    _, valid = depth_from_flow(fwd, bwd, CAMERA)
    assert not valid.any()
    fwd, bwd = constant_flows(disparity_at_20m * 1.01)  # just inside 20 m
    depth, valid = depth_from_flow(fwd, bwd, CAMERA)
    assert valid[:, :, 4:].all() and depth[valid].max() < 20.0


def test_non_finite_flow_is_invalid():
    fwd, bwd = constant_flows(4.0)
    fwd[0, 3, 12, 0] = np.nan
    fwd[1, 4, 12, 1] = np.inf
    depth, valid = depth_from_flow(fwd, bwd, CAMERA)
    assert not valid[0, 3, 12] and not valid[1, 4, 12]
    assert np.isfinite(depth).all()


def test_warp_samples_integer_offsets_exactly_and_zero_outside():
    rng = np.random.default_rng(0)
    field = rng.normal(size=(H, W, 2)).astype(np.float32)
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = 3.0
    flow[..., 1] = -2.0
    warped = warp_backward_flow(field, flow)
    np.testing.assert_allclose(warped[2:, : W - 3], field[:-2, 3:], atol=1e-6)
    flow[..., 0] = W + 5.0  # far outside: bicubic taps all read the zero border
    assert (warp_backward_flow(field, flow) == 0).all()


def test_rejects_mismatched_shapes():
    fwd, bwd = constant_flows(1.0)
    with pytest.raises(ValueError, match="equal shape"):
        depth_from_flow(fwd, bwd[:, :, :-1], CAMERA)
    with pytest.raises(ValueError, match="32 px wide, the camera 512 px"):
        depth_from_flow(fwd, bwd, RectifiedCamera(512, 60.0, 0.063))


def test_depth_scales_with_the_clips_baseline():
    """The camera carries the video's own baseline: a rig twice as wide sees the same
    disparity twice as far away."""
    fwd, bwd = constant_flows(4.0)
    near, _ = depth_from_flow(fwd, bwd, CAMERA)
    far, valid = depth_from_flow(fwd, bwd, CAMERA.with_baseline(0.126))
    np.testing.assert_allclose(far[valid], 2 * near[valid], rtol=1e-6)
