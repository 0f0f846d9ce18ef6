"""SEA-RAFT: official checkpoint layout, loading through fsspec, outputs, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model

from s4d_ray.models.sea_raft import (
    SEARAFT,
    SPRING_M_CONFIG,
    CorrPyramid,
    SEARAFTConfig,
    checkpoint_layout,
    coords_grid,
    load_sea_raft,
)
from s4d_ray.models.weights import CheckpointError
from tests.tiny_models import TINY_SEA_RAFT as TINY

torch.set_num_threads(2)

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "sea_raft_spring_m_keys.json").read_text()
)
"""Tensors of the official spring-M file (names, shapes, dtypes) and the omitted aliases,
recorded from princeton-vl/SEA-RAFT's RAFT(spring-M) saved as its Hub mixin saves it."""


@pytest.fixture(scope="module")
def spring_m() -> SEARAFT:
    torch.manual_seed(0)
    return SEARAFT(SPRING_M_CONFIG).eval()


def official_layout_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped as in the official file (aliases omitted)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, spec in FIXTURE["tensors"].items():
        shape = spec["shape"]
        if spec["dtype"] == "int64":
            tensors[name] = torch.randint(0, 1000, shape, generator=generator)
        elif name.endswith("running_var"):
            tensors[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            tensors[name] = torch.randn(shape, generator=generator) * 0.05
    return tensors


def write_official_layout(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write as `safetensors.torch.save_model` does: shared BN under `bn3` only, aliases in
    the header metadata."""
    save_file(tensors, str(path), metadata=FIXTURE["aliases"])
    return str(path)


def test_spring_m_config_from_official_json_keys():
    official = {
        "name": "spring-M", "dataset": "spring", "gpus": [0, 1, 2, 3, 4, 5, 6, 7],
        "use_var": True, "var_min": 0, "var_max": 10, "pretrain": "resnet34",
        "initial_dim": 64, "block_dims": [64, 128, 256], "radius": 4, "dim": 128,
        "num_blocks": 2, "iters": 4, "image_size": [540, 960], "scale": -1, "batch_size": 32,
        "epsilon": 1e-8, "lr": 4e-4, "wdecay": 1e-5, "dropout": 0, "clip": 1.0, "gamma": 0.85,
        "num_steps": 120000, "restore_ckpt": None, "coarse_config": None,
    }  # fmt: skip
    assert SEARAFTConfig.from_dict(official) == SPRING_M_CONFIG
    with pytest.raises(ValueError, match="unknown SEA-RAFT config keys"):
        SEARAFTConfig.from_dict({**official, "dimm": 3})


def test_state_dict_equals_official(spring_m):
    layout = checkpoint_layout(spring_m)
    expected = {name: tuple(spec["shape"]) for name, spec in FIXTURE["tensors"].items()}
    assert layout == expected
    state = spring_m.state_dict()
    assert set(state) == set(expected) | set(FIXTURE["aliases"])
    for name, spec in FIXTURE["tensors"].items():
        assert str(state[name].dtype) == f"torch.{spec['dtype']}", name
    for alias, stored in FIXTURE["aliases"].items():
        assert state[alias].data_ptr() == state[stored].data_ptr()


def test_official_layout_checkpoint_loads(tmp_path, monkeypatch):
    tensors = official_layout_tensors()
    write_official_layout(tmp_path / "model.safetensors", tensors)
    # Through fsspec and the weights cache, as a gs:// or https:// URI would go.
    monkeypatch.setenv("S4D_CACHE_DIR", str(tmp_path / "cache"))
    import fsspec

    with fsspec.open("memory://sea-raft/model.safetensors", "wb") as f:
        f.write((tmp_path / "model.safetensors").read_bytes())
    model = load_sea_raft("memory://sea-raft/model.safetensors")
    assert not model.training
    state = model.state_dict()
    for name, tensor in tensors.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)
    for alias, stored in FIXTURE["aliases"].items():
        torch.testing.assert_close(state[alias], tensors[stored], rtol=0, atol=0)


def test_alias_stored_under_other_name_loads(tmp_path):
    tensors = official_layout_tensors(seed=1)
    renamed = {}
    for name, tensor in tensors.items():
        alias = next((a for a, s in FIXTURE["aliases"].items() if s == name), name)
        renamed[alias] = tensor
    save_file(renamed, str(tmp_path / "alt.safetensors"))
    model = load_sea_raft(str(tmp_path / "alt.safetensors"))
    torch.testing.assert_close(
        model.fnet.layer3[0].bn3.running_var, tensors["fnet.layer3.0.bn3.running_var"]
    )


def test_roundtrip_of_own_save(tmp_path):
    torch.manual_seed(3)
    model = SEARAFT(TINY)
    save_model(model, str(tmp_path / "tiny.safetensors"))
    loaded = load_sea_raft(str(tmp_path / "tiny.safetensors"), TINY)
    image1 = torch.rand(1, 3, 64, 64) * 255
    image2 = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        expected = model.eval()(image1, image2, test_mode=True)["final"]
        actual = loaded(image1, image2, test_mode=True)["final"]
    torch.testing.assert_close(actual, expected)


def test_wrong_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_sea_raft(str(tmp_path / "absent.safetensors"))

    (tmp_path / "junk.safetensors").write_bytes(b"PK\x03\x04 not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_sea_raft(str(tmp_path / "junk.safetensors"))

    tensors = official_layout_tensors()
    del tensors["update_block.encoder.convc1.bias"]
    tensors["head.extra.weight"] = torch.zeros(3)
    write_official_layout(tmp_path / "edited.safetensors", tensors)
    with pytest.raises(CheckpointError) as error:
        load_sea_raft(str(tmp_path / "edited.safetensors"))
    message = str(error.value)
    assert "1 missing keys (update_block.encoder.convc1.bias)" in message
    assert "1 unexpected keys (head.extra.weight)" in message

    save_model(SEARAFT(TINY), str(tmp_path / "tiny.safetensors"))
    with pytest.raises(CheckpointError, match="wrong shapes .*cnet.conv1.weight"):
        load_sea_raft(str(tmp_path / "tiny.safetensors"))


def test_output_shapes_and_padding(spring_m):
    image1 = torch.rand(1, 3, 60, 84) * 255  # padded to 64x88 inside, cropped back
    image2 = torch.roll(image1, 3, dims=3)
    with torch.no_grad():
        out = spring_m(image1, image2, iters=1, test_mode=True)
    assert len(out["flow"]) == len(out["info"]) == 2
    assert all(f.shape == (1, 2, 60, 84) for f in out["flow"])
    assert all(i.shape == (1, 4, 60, 84) for i in out["info"])
    assert out["final"] is out["flow"][-1]
    assert out["nf"] is None
    assert torch.isfinite(out["final"]).all()


def test_training_mode_returns_mixture_loss():
    torch.manual_seed(0)
    model = SEARAFT(TINY).eval()
    image1 = torch.rand(2, 3, 36, 44) * 255
    with torch.no_grad():
        out = model(image1, image1.flip(3), flow_gt=torch.zeros(2, 2, 36, 44))
    assert len(out["nf"]) == TINY.iters + 1
    assert all(nf.shape == (2, 2, 36, 44) and torch.isfinite(nf).all() for nf in out["nf"])


def test_convex_upsampling_of_constant_flow():
    flow = torch.tensor([1.5, -0.25]).view(1, 2, 1, 1).expand(1, 2, 4, 5)
    info = torch.randn(1, 4, 4, 5)
    mask = torch.randn(1, 576, 4, 5)
    up_flow, up_info = SEARAFT.upsample_data(flow, info, mask)
    assert up_flow.shape == (1, 2, 32, 40) and up_info.shape == (1, 4, 32, 40)
    # Away from the zero-padded border every 3x3 neighbour holds the same vector: 8x it.
    interior = up_flow[..., 8:24, 8:32]
    torch.testing.assert_close(interior[:, 0], torch.full_like(interior[:, 0], 12.0))
    torch.testing.assert_close(interior[:, 1], torch.full_like(interior[:, 1], -2.0))


def test_correlation_window_order_is_x_major():
    torch.manual_seed(0)
    fmap1 = torch.randn(1, 32, 12, 16)
    fmap2 = torch.roll(fmap1, shifts=(1, 2), dims=(2, 3))  # feature at p moves to p + (x2, y1)
    radius = 3
    pyramid = CorrPyramid(fmap1, fmap2, radius)
    corr = pyramid.lookup(coords_grid(1, 12, 16, torch.device("cpu")))
    window = 2 * radius + 1
    assert corr.shape == (1, 4 * window**2, 12, 16)
    best = corr[0, : window**2, 4:8, 4:12].argmax(dim=0)
    assert (best == (2 + radius) * window + (1 + radius)).all()
