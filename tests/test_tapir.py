"""BootsTAP TAPIR: official checkpoint layout, loading, output contract, cached-grid tracking.

Fast cases use a 32x32 training resolution on 64x64 videos (two refinement resolutions, as a
512 video has at the real 256 size); the default 256 configuration runs once.
"""

import json
from pathlib import Path

import pytest
import torch

from s4d_ray.models.tapir import (
    TAPIR,
    _linear,
    _sample_frames,
    _sample_patches,
    _window_correlation,
    default_refinement_resolutions,
    load_bootstap,
    visible_from_logits,
)
from s4d_ray.models.weights import CheckpointError

FIXTURE = Path(__file__).parent / "fixtures" / "bootstapir_keys.json"


def _video_and_queries(t: int, hw: int, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    video = torch.rand(1, t, hw, hw, 3, generator=gen) * 2 - 1
    frames = torch.randint(0, t, (n,), generator=gen).float()
    yx = torch.rand(n, 2, generator=gen) * (hw - 1)
    return video, torch.cat([frames[:, None], yx], dim=-1)[None]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine more threads run 10-30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def small_model() -> TAPIR:
    torch.manual_seed(0)
    return TAPIR(initial_resolution=(32, 32)).eval()


@pytest.fixture(scope="module")
def small_run(small_model):
    video, queries = _video_and_queries(t=3, hw=64, n=5)
    with torch.no_grad():
        out = small_model(video, queries, query_chunk_size=2)
    return video, queries, out


def test_state_dict_matches_official_bootstapir_layout():
    official = json.loads(FIXTURE.read_text())
    ours = {k: list(v.shape) for k, v in TAPIR().state_dict().items()}
    assert sorted(ours) == sorted(official)
    assert ours == official


def test_load_bootstap_reads_official_file_format(tmp_path):
    torch.manual_seed(1)
    weights = TAPIR().state_dict()
    path = tmp_path / "bootstapir_checkpoint_v2.pt"
    torch.save(weights, path)
    model = load_bootstap(str(path))
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_load_bootstap_rejects_wrong_files(tmp_path):
    weights = TAPIR(extra_convs=False).state_dict()
    torch.save(weights, tmp_path / "no_extra_convs.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_bootstap(str(tmp_path / "no_extra_convs.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch state dict"):
        load_bootstap(str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError):
        load_bootstap(str(tmp_path / "absent.pt"))


def test_default_refinement_resolutions():
    assert default_refinement_resolutions((512, 512), (256, 256)) == [(256, 256), (512, 512)]
    assert default_refinement_resolutions((256, 256), (256, 256)) == [(256, 256)]
    assert default_refinement_resolutions((64, 64), (256, 256)) == [(256, 256)]
    assert default_refinement_resolutions((1024, 512), (256, 256)) == [
        (256, 256),
        (512, 360),
        (1024, 512),
    ]


def test_outputs_shapes_and_query_anchoring(small_run):
    _, queries, out = small_run
    assert out["tracks"].shape == (1, 5, 3, 2)
    assert out["occlusion"].shape == out["expected_dist"].shape == (1, 5, 3)
    # initial + 4 refinements at each of 2 resolutions; the final iterate is not "unrefined"
    assert len(out["unrefined_tracks"]) == len(out["unrefined_occlusion"]) == 8
    assert all(torch.isfinite(out[k]).all() for k in ("tracks", "occlusion", "expected_dist"))
    # the cost-volume track passes exactly through each query point at its query frame
    initial = out["unrefined_tracks"][0][0]
    query_frames = queries[0, :, 0].long()
    anchored = initial[torch.arange(5), query_frames]
    torch.testing.assert_close(anchored, queries[0, :, [2, 1]])


def test_cached_grids_match_plain_forward(small_model, small_run):
    video, queries, out = small_run
    with torch.no_grad():
        grids = small_model.get_feature_grids(video)
        same_chunks = small_model.track_with_grids(grids, queries, query_chunk_size=2)
        one_chunk = small_model.track_with_grids(grids, queries, query_chunk_size=64)
        pieces = [small_model.track_with_grids(grids, queries[:, i : i + 1]) for i in range(5)]
    assert grids.resolutions == ((32, 32), (32, 32), (64, 64))
    assert grids.lowres[0].shape == (1, 3, 4, 4, 256)
    assert grids.hires[2].shape == (1, 3, 16, 16, 128)
    torch.testing.assert_close(grids.lowres[2].norm(dim=-1), torch.ones(1, 3, 8, 8))
    for key in ("tracks", "occlusion", "expected_dist"):
        assert torch.equal(same_chunks[key], out[key])
        torch.testing.assert_close(one_chunk[key], out[key], rtol=1e-5, atol=1e-4)
        stitched = torch.cat([p[key] for p in pieces], dim=1)
        torch.testing.assert_close(stitched, out[key], rtol=1e-5, atol=1e-4)


def test_window_correlation_equals_sampled_patches_dotted():
    """The fused correlation = bilinear 7x7 patches (zero outside the grid) dotted with the
    features, including windows that hang over every border and non-square grids."""
    gen = torch.Generator().manual_seed(3)
    grid = torch.randn(2, 3, 5, 7, 16, generator=gen)
    coords = torch.rand(2, 4, 3, 2, generator=gen) * torch.tensor([9.0, 11.0]) - 2.0
    feats = torch.randn(2, 4, 3, 16, generator=gen)
    r = 3
    offsets = torch.stack(
        torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij"), -1
    ).reshape(-1, 2)
    patches = _sample_patches(grid, coords[..., None, :] + offsets.float())
    expected = torch.einsum("bntsc,bntc->bnts", patches, feats)
    torch.testing.assert_close(_window_correlation(grid, coords, feats), expected)


@pytest.mark.parametrize("chunk", [2, 64])
def test_fused_refinement_matches_the_plain_one(small_model, chunk):
    """Fused correlations + channels-last mixer convs vs the plain path: <= 1e-4 relative."""
    video, queries = _video_and_queries(t=4, hw=64, n=6, seed=1)
    queries[0, 0, 1:] = torch.tensor([0.2, 63.7])  # windows over the image border
    with torch.no_grad():
        grids = small_model.get_feature_grids(video)
        fused = small_model.set_fused_refinement(True).track_with_grids(grids, queries, chunk)
        plain = small_model.set_fused_refinement(False).track_with_grids(grids, queries, chunk)
    small_model.set_fused_refinement(True)
    for key in ("tracks", "occlusion", "expected_dist"):
        scale = plain[key].abs().max()
        assert (fused[key] - plain[key]).abs().max() <= 1e-4 * scale, key


@pytest.mark.parametrize("gelu", [False, True])
def test_fused_linear_matches_nn_linear_and_keeps_autograd(gelu):
    """`_linear` (oneDNN on fp32 CPU inference) = nn.Linear (+ tanh GELU) to float rounding;
    with autograd recording it takes the differentiable path and gradients flow."""
    gen = torch.Generator().manual_seed(4)
    layer = torch.nn.Linear(32, 64)
    x = torch.randn(5, 7, 32, generator=gen)
    expected = layer(x)
    if gelu:
        expected = torch.nn.functional.gelu(expected, approximate="tanh")
    with torch.inference_mode():
        torch.testing.assert_close(_linear(x, layer, gelu), expected, rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    _linear(x, layer, gelu).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_sampling_reads_cell_centres_on_non_square_grids():
    grid = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6, 1)
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    centres_yx = torch.stack([ys, xs], -1).reshape(1, 1, 1, 24, 2) + 0.5
    patches = _sample_patches(grid, centres_yx.expand(1, 1, 2, 24, 2))
    torch.testing.assert_close(patches[0, 0, :, :, 0], grid.reshape(2, 24))
    tyx = torch.tensor([[[1.0, 2.5, 4.5], [0.0, 0.5, 1.0]]])
    torch.testing.assert_close(_sample_frames(grid, tyx)[..., 0], torch.tensor([[40.0, 0.5]]))


def test_visible_from_logits():
    occ = torch.tensor([-10.0, -10.0, 10.0, 0.0])
    expd = torch.tensor([-10.0, 10.0, -10.0, -10.0])
    assert visible_from_logits(occ, expd).tolist() == [True, False, False, False]


def test_rejects_resolution_not_multiple_of_8(small_model):
    video, _ = _video_and_queries(t=2, hw=64, n=1)
    with pytest.raises(ValueError, match="multiples of 8"):
        small_model.get_feature_grids(video, refinement_resolutions=[(60, 60)])


def test_default_bootstap_config_on_tiny_video():
    torch.manual_seed(2)
    model = TAPIR().eval()
    video, queries = _video_and_queries(t=2, hw=64, n=3, seed=3)
    with torch.no_grad():
        out = model(video, queries)
    assert out["tracks"].shape == (1, 3, 2, 2)
    assert out["occlusion"].shape == out["expected_dist"].shape == (1, 3, 2)
    assert len(out["unrefined_tracks"]) == 4  # 64x64 refines once, at the 256 training size
    initial = out["unrefined_tracks"][0][0]
    anchored = initial[torch.arange(3), queries[0, :, 0].long()]
    torch.testing.assert_close(anchored, queries[0, :, [2, 1]])
