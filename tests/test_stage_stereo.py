"""The stereo stage: SGBM on rendered fronto-parallel planes, SEA-RAFT plumbing, half-res."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from s4d_ray.geometry.camera import RectifiedCamera, focal_length_px
from s4d_ray.models.sea_raft import SEARAFT
from s4d_ray.stages.stereo import (
    StereoMatcher,
    half_resolution_flow,
    sea_raft_batch_size,
)
from s4d_ray.track.depth import depth_from_flow
from tests.tiny_models import TINY_SEA_RAFT as TINY

torch.set_num_threads(2)


HEIGHT, WIDTH = 96, 160
BACKGROUND_DISPARITY = 6.0
FOREGROUND_DISPARITY = 17.5
BOX = (24, 72, 50, 110)  # foreground rows y0:y1, columns x0:x1 in the left image


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Band-limited random texture [H,W] float32 in 0..255 (fine and coarse blobs)."""
    fine = cv2.GaussianBlur(rng.random((height, width), dtype=np.float32), (0, 0), 1.0)
    coarse = cv2.resize(rng.random((height // 4, width // 4), dtype=np.float32), (width, height))
    image = fine + 0.5 * cv2.GaussianBlur(coarse, (0, 0), 2.0)
    image -= image.min()
    return (255.0 * image / image.max()).astype(np.float32)


def sample_rows(image: np.ndarray, x: np.ndarray) -> np.ndarray:
    """image [H,W'] sampled bilinearly at columns x [H,W] (float), same row."""
    rows = np.broadcast_to(np.arange(x.shape[0], dtype=np.float32)[:, None], x.shape)
    return cv2.remap(image, x.astype(np.float32), np.ascontiguousarray(rows), cv2.INTER_LINEAR)


def render_planes(frames: int = 1, seed: int = 0):
    """A textured background plane and a nearer textured box, seen by a rectified pair.

    A surface point at texture coordinate s with disparity d is seen at x = s + d/2 in the left
    image and at x − d in the right one, so both images sample the texture at the same sub-pixel
    phase. Returns left, right [T,H,W,3] uint8 and the disparity maps of both views [H,W] px.
    """
    rng = np.random.default_rng(seed)
    margin = 64
    background = texture(rng, HEIGHT, WIDTH + 2 * margin)
    foreground = texture(rng, HEIGHT, WIDTH + 2 * margin)
    y0, y1, x0, x1 = BOX
    x = np.broadcast_to(np.arange(WIDTH, dtype=np.float32), (HEIGHT, WIDTH))
    rows = slice(y0, y1)

    def view(sign: float) -> tuple[np.ndarray, np.ndarray]:
        # left view: s = x - d/2; right view: s = x + d/2 (the same point moved by -d).
        image = sample_rows(background, x + margin + sign * BACKGROUND_DISPARITY / 2)
        disparity_map = np.full((HEIGHT, WIDTH), BACKGROUND_DISPARITY, np.float32)
        shift = 0.0 if sign < 0 else FOREGROUND_DISPARITY
        columns = slice(int(np.ceil(x0 - shift)), int(np.ceil(x1 - shift)))
        fg = sample_rows(foreground, x + margin + sign * FOREGROUND_DISPARITY / 2)
        image[rows, columns] = fg[rows, columns]
        disparity_map[rows, columns] = FOREGROUND_DISPARITY
        return image, disparity_map

    left, disparity_left = view(-1.0)
    right, disparity_right = view(+1.0)

    def to_rgb(grey: np.ndarray) -> np.ndarray:
        rgb = np.repeat(np.clip(grey, 0, 255).round().astype(np.uint8)[..., None], 3, axis=-1)
        return np.repeat(rgb[None], frames, axis=0)

    return to_rgb(left), to_rgb(right), disparity_left, disparity_right


@pytest.fixture(scope="module")
def planes():
    return render_planes(frames=2)


@pytest.fixture(scope="module")
def sgbm_flows(planes):
    left, right, _, _ = planes
    return StereoMatcher("cpu", num_disparities=32)(left, right)


def test_cpu_backend_recovers_plane_disparities(planes, sgbm_flows):
    """Background at a whole-pixel disparity, foreground box at a half-pixel one (the worst
    case for SGBM's parabola sub-pixel fit, which locks towards whole pixels: ~0.3 px bias
    measured at x.5, <= 0.25 px at x.25 / x.75). A wrong sign, a mirrored pass or a missed /16
    scale is off by >= 6 px. So: median error over matched pixels <= 0.25 px (most of the
    image is background), box median within 0.35 px, >= 90 % of matched pixels within 1 px,
    >= 80 % matched (left image border, occlusions, box edges are lost)."""
    _, _, disparity_left, disparity_right = planes
    flow_fwd, flow_bwd = sgbm_flows
    assert flow_fwd.shape == flow_bwd.shape == (2, HEIGHT, WIDTH, 2)
    assert flow_fwd.dtype == flow_bwd.dtype == np.float32
    for flow, truth in ((flow_fwd, -disparity_left), (flow_bwd, disparity_right)):
        matched = ~np.isnan(flow[..., 0])
        np.testing.assert_array_equal(matched, ~np.isnan(flow[..., 1]))
        assert (flow[..., 1][matched] == 0).all()
        assert matched.mean() >= 0.8
        error = np.abs(flow[..., 0] - truth)[matched]
        assert np.median(error) <= 0.25
        assert (error <= 1.0).mean() >= 0.9
    y0, y1, x0, x1 = BOX
    box = flow_fwd[0, y0 + 4 : y1 - 4, x0 + 4 : x1 - 4, 0]
    assert abs(np.nanmedian(box) + FOREGROUND_DISPARITY) <= 0.35


def test_cpu_flows_give_plane_depths(planes, sgbm_flows):
    """Through the depth stage: both planes at their metric depth. Columns 12..31 lie inside
    OpenCV's unmatched left band (num_disparities = 32 wide) and are recovered by the padding;
    columns < 6 see background with no counterpart in the right image."""
    _, _, disparity_left, _ = planes
    depth, valid = depth_from_flow(*sgbm_flows, RectifiedCamera(WIDTH, 60.0, 0.063))
    truth = focal_length_px(WIDTH, 60.0) * 0.063 / disparity_left
    assert valid.mean() >= 0.7
    assert valid[:, :, 12:32].mean() >= 0.9
    relative = np.abs(depth[valid] - np.broadcast_to(truth, depth.shape)[valid])
    relative /= np.broadcast_to(truth, depth.shape)[valid]
    assert np.median(relative) <= 0.02


def test_half_resolution_flow_upsamples_and_scales():
    """A known half-resolution flow field: linear in x, constant in y."""
    seen = {}

    def known_flow(image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        seen["shape"] = tuple(image1.shape)
        seen["image1"] = image1
        batch, _, height, width = image1.shape
        x = torch.arange(width, dtype=torch.float32).expand(batch, height, width)
        return torch.stack([0.25 * x - 3.0, torch.full_like(x, 0.75)], dim=1)

    image1 = torch.rand(2, 3, 16, 24) * 255
    flow = half_resolution_flow(known_flow, image1, image1)
    assert seen["shape"] == (2, 3, 8, 12)
    # Halving is 2x2 averaging (bilinear, align_corners=False, exact factor 2).
    averaged = image1.reshape(2, 3, 8, 2, 12, 2).mean(dim=(3, 5))
    torch.testing.assert_close(seen["image1"], averaged)
    assert flow.shape == (2, 2, 16, 24)
    # Full-res column X sits at half-res x = (X + 0.5) / 2 - 0.5; vectors are doubled.
    columns = torch.arange(1, 23, dtype=torch.float32)
    expected_x = 2.0 * (0.25 * ((columns + 0.5) / 2 - 0.5) - 3.0)
    torch.testing.assert_close(flow[:, 0, :, 1:23], expected_x.expand(2, 16, 22))
    torch.testing.assert_close(flow[:, 1], torch.full((2, 16, 24), 1.5))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sea_raft") / "tiny.safetensors"
    save_model(SEARAFT(TINY), str(path))
    return str(path)


def test_neural_backend_directions_and_batching(tiny_weights):
    left, right, _, _ = render_planes(frames=3)
    left, right = left[:, :64, :96], right[:, :64, :96]
    matcher = StereoMatcher("neural", weights_uri=tiny_weights, config=TINY, batch_size=4)
    flow_fwd, flow_bwd = matcher(left, right)
    assert flow_fwd.shape == flow_bwd.shape == (3, 64, 96, 2)
    assert flow_fwd.dtype == np.float32 and np.isfinite(flow_fwd).all()
    provenance = matcher.provenance()
    assert provenance["backend"] == "neural" and provenance["model"] == "sea-raft"
    assert provenance["config"]["iters"] == TINY.iters and provenance["precision"] == "fp32"
    assert provenance["weights_uri"] == tiny_weights
    assert (
        provenance["weights_sha256"] == hashlib.sha256(Path(tiny_weights).read_bytes()).hexdigest()
    )

    # fwd is the network's left->right answer on the half-resolution pair, bwd right->left.
    model = matcher.backend.model
    image_left = torch.from_numpy(left[1]).permute(2, 0, 1)[None].float()
    image_right = torch.from_numpy(right[1]).permute(2, 0, 1)[None].float()

    def network(image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        return model(image1, image2, test_mode=True)["flow"][-1]

    with torch.no_grad():
        direct_fwd = half_resolution_flow(network, image_left, image_right)[0].permute(1, 2, 0)
        direct_bwd = half_resolution_flow(network, image_right, image_left)[0].permute(1, 2, 0)
    np.testing.assert_allclose(flow_fwd[1], direct_fwd.numpy(), atol=1e-4)
    np.testing.assert_allclose(flow_bwd[1], direct_bwd.numpy(), atol=1e-4)

    # Swapping the eyes swaps the directions; batch size does not change the answer.
    one_pair = StereoMatcher("neural", weights_uri=tiny_weights, config=TINY, batch_size=1)
    swapped_fwd, swapped_bwd = one_pair(right, left)
    np.testing.assert_allclose(swapped_fwd, flow_bwd, atol=1e-4)
    np.testing.assert_allclose(swapped_bwd, flow_fwd, atol=1e-4)


def test_neural_backend_bf16_autocast(tiny_weights):
    left, right, _, _ = render_planes(frames=1)
    matcher = StereoMatcher(
        "neural", weights_uri=tiny_weights, config=TINY, precision="bf16", batch_size=2
    )
    flow_fwd, flow_bwd = matcher(left[:, :64, :64], right[:, :64, :64])
    assert flow_fwd.dtype == np.float32 and flow_fwd.shape == (1, 64, 64, 2)
    assert np.isfinite(flow_fwd).all() and np.isfinite(flow_bwd).all()


def test_batch_size_for_memory():
    gib = 1 << 30
    assert sea_raft_batch_size(80 * gib, 512, 512) == 256
    assert sea_raft_batch_size(8 * gib, 512, 512) == 32
    assert sea_raft_batch_size(1 << 20, 512, 512) == 1


def test_cpu_stages_name_their_model_and_settings():
    """`provenance()`, the one interface of the stage classes that outputs record."""
    from s4d_ray.stages.tracking import Tracker

    stereo = StereoMatcher("cpu", num_disparities=32).provenance()
    assert stereo["backend"] == "cpu" and stereo["model"] == "opencv-sgbm-3way"
    assert stereo["config"]["num_disparities"] == 32 and stereo["weights_uri"] is None
    tracking = Tracker("cpu", query_stride=6).provenance()
    assert tracking["model"] == "opencv-lucas-kanade" and tracking["config"]["query_stride"] == 6
    assert tracking["precision"] == "fp32" and tracking["library"].startswith("opencv")


def test_bad_arguments():
    left = np.zeros((1, 32, 48, 3), np.uint8)
    with pytest.raises(ValueError, match="backend must be one of"):
        StereoMatcher("gpu")
    with pytest.raises(ValueError, match="multiple of 16"):
        StereoMatcher("cpu", num_disparities=40)
    with pytest.raises(ValueError, match="right must match left"):
        StereoMatcher("cpu")(left, left[:, :, :40])
    with pytest.raises(ValueError, match="uint8"):
        StereoMatcher("cpu")(left.astype(np.float32), left)
