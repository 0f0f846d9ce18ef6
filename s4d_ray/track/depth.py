"""The stereo stage's CPU part: metric depth of the rectified left eye from stereo flow.

Follows the Stereo4D reference (`segmentation.load_rgbd_cam_from_pkl`, `utils.flow_to_depth`,
`utils.inverse_warp`): disparity = max(-flow_fwd_x, 0); depth = fx·baseline / disparity with
fx = W / (2·tan(hfov/2)); a pixel is invalid (depth set to 0, as the reference does) where the
forward-backward check fails, where the vertical flow exceeds 1 px, or where depth is outside
(0, max_depth]. The backward flow is warped into the left view with OpenCV's bicubic `remap`
and a zero constant border, exactly as the reference's `inverse_warp`.
"""

from __future__ import annotations

import cv2
import numpy as np

from s4d_ray.geometry.camera import RectifiedCamera

FB_THRESHOLD_PX = 1.0
VERTICAL_FLOW_THRESHOLD_PX = 1.0
EDGE_THRESHOLD = 0.03
"""Relative depth gradient that marks a floating point on a depth edge (reference value)."""


def warp_backward_flow(flow_bwd: np.ndarray, flow_fwd: np.ndarray) -> np.ndarray:
    """Sample `flow_bwd [H,W,2]` px at x + flow_fwd(x): bicubic, zero outside the image.

    Same as the reference's `inverse_warp` (cv2.remap, INTER_CUBIC, BORDER_CONSTANT).
    """
    height, width = flow_fwd.shape[:2]
    sample_map = flow_fwd.astype(np.float32, copy=True)
    sample_map[..., 0] += np.arange(width, dtype=np.float32)
    sample_map[..., 1] += np.arange(height, dtype=np.float32)[:, None]
    return cv2.remap(
        np.ascontiguousarray(flow_bwd, dtype=np.float32),
        sample_map,
        None,
        interpolation=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_CONSTANT,
    )


def depth_edge_mask(depth: np.ndarray, threshold: float = EDGE_THRESHOLD) -> np.ndarray:
    """Pixels [T,H,W] bool on a depth discontinuity ("floating points" of the reference).

    A non-zero pixel is marked when the central difference of depth along x or y (edge
    padded) exceeds `threshold` times its own depth; next to an invalid (0) pixel this always
    holds, so valid regions also lose their one-pixel rim, as in the reference.
    """
    padded = np.pad(depth, ((0, 0), (1, 1), (1, 1)), mode="edge")
    grad_x = np.abs(padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2])
    grad_y = np.abs(padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1])
    limit = threshold * depth
    return ((grad_x > limit) | (grad_y > limit)) & (depth != 0)


def depth_from_flow(
    flow_fwd: np.ndarray,
    flow_bwd: np.ndarray,
    camera: RectifiedCamera,
    max_depth_m: float = 20.0,
    edge_threshold: float = EDGE_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Depth of the left eye from left→right and right→left flow.

    Args:
        flow_fwd: [T,H,W,2] px, left→right flow (x, y); a point at finite depth moves left.
        flow_bwd: [T,H,W,2] px, right→left flow.
        camera: the clip's rectified camera (focal length from its size and field of view,
            its stereo baseline); frames W px wide must be `camera.size_px` wide.
        max_depth_m: depths above this are invalid.
        edge_threshold: relative depth gradient above which a pixel is a floating point at a
            depth discontinuity and invalid (reference `gradient_check_mask_relative`, 0.03).

    Returns:
        depth [T,H,W] float32 m (0 where invalid), valid [T,H,W] bool.
    """
    flow_fwd = np.asarray(flow_fwd)
    flow_bwd = np.asarray(flow_bwd)
    if flow_fwd.ndim != 4 or flow_fwd.shape[-1] != 2 or flow_bwd.shape != flow_fwd.shape:
        raise ValueError(
            f"expected flow_fwd and flow_bwd of equal shape [T,H,W,2], got "
            f"{flow_fwd.shape} and {flow_bwd.shape}"
        )
    num_frames, height, width = flow_fwd.shape[:3]
    if width != camera.size_px:
        raise ValueError(f"flow is {width} px wide, the camera {camera.size_px} px")
    focal_baseline = camera.focal_px * camera.baseline_m
    depth = np.zeros((num_frames, height, width), dtype=np.float32)
    valid = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        fwd = flow_fwd[t].astype(np.float32, copy=False)
        disparity = np.maximum(-fwd[..., 0].astype(np.float64), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            frame_depth = focal_baseline / disparity
        fb_error = np.linalg.norm(warp_backward_flow(flow_bwd[t], fwd) + fwd, axis=-1)
        frame_valid = (
            (fb_error <= FB_THRESHOLD_PX)
            & (np.abs(fwd[..., 1]) <= VERTICAL_FLOW_THRESHOLD_PX)
            & (frame_depth > 0)
            & (frame_depth <= max_depth_m)
        )
        valid[t] = frame_valid
        depth[t] = np.where(frame_valid, frame_depth, 0.0)
    valid &= ~depth_edge_mask(depth, edge_threshold)
    depth[~valid] = 0.0
    return depth, valid
