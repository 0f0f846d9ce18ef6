"""DynaDUSt3R: official checkpoint layout, loading, outputs, time conditioning, round trips."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest
import torch

from s4d_ray.models.dynadust3r import (
    DynaDUSt3R,
    DynaDUSt3RConfig,
    config_from_dust3r_args,
    load_dust3r,
    rope_tables,
    save_dynadust3r,
)
from s4d_ray.models.weights import CheckpointError

torch.set_num_threads(2)

FIXTURE = Path(__file__).parent / "fixtures" / "dust3r_vitl_512_dpt_keys.json"
TINY_ARGS = (
    "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', "
    "img_size=(512, 512), head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), "
    "conf_mode=('exp', 1, inf), enc_embed_dim=32, enc_depth=2, enc_num_heads=2, "
    "dec_embed_dim=32, dec_depth=4, dec_num_heads=2)"
)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter (default init leaves norms at 1 and biases at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.add_(noise * (0.02 if param.ndim > 1 else 0.1))


def _views(batch: int, hw1: tuple[int, int], hw2: tuple[int, int], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    views = []
    for height, width in (hw1, hw2):
        image = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
        views.append({"img": image, "true_shape": torch.tensor([[height, width]] * batch)})
    return views


def _write_official(path: Path, model_args: str, weights: dict[str, torch.Tensor]) -> None:
    namespace = argparse.Namespace(model=model_args, lr=1e-4, batch_size=4)
    torch.save({"args": namespace, "model": weights, "epoch": 89}, path)


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory) -> tuple[Path, DynaDUSt3R]:
    """An official-format checkpoint (args Namespace, model, epoch) of a tiny random DUSt3R."""
    source = DynaDUSt3R(config_from_dust3r_args(TINY_ARGS)).eval()
    _randomise(source, seed=1)
    path = tmp_path_factory.mktemp("dust3r") / "tiny_dust3r.pth"
    _write_official(path, TINY_ARGS, source.dust3r_state_dict())
    return path, source


@pytest.fixture(scope="module")
def small_model() -> DynaDUSt3R:
    """A random model with narrow DPT heads too (not describable by DUSt3R args), for speed."""
    config = DynaDUSt3RConfig(
        enc_embed_dim=32,
        enc_depth=2,
        enc_num_heads=2,
        dec_embed_dim=32,
        dec_depth=4,
        dec_num_heads=2,
        dpt_layer_dims=(8, 16, 24, 32),
        dpt_feature_dim=16,
        dpt_last_dim=8,
        time_embed_dim=16,
    )
    model = DynaDUSt3R(config).eval()
    _randomise(model, seed=2)
    return model


def test_dust3r_part_matches_official_checkpoint_layout():
    fixture = json.loads(FIXTURE.read_text())
    config = config_from_dust3r_args(fixture["args"])
    assert config == DynaDUSt3RConfig()
    with torch.device("meta"):
        model = DynaDUSt3R(config)
    ours = {name: list(t.shape) for name, t in model.dust3r_state_dict().items()}
    assert ours == fixture["shapes"]
    motion = [k for k in model.state_dict() if k.startswith("motion_head")]
    assert motion and all(k.startswith(("motion_head1.", "motion_head2.")) for k in motion)


def test_official_format_checkpoint_loads_and_reproduces_dust3r(tiny_official):
    path, source = tiny_official
    model = load_dust3r(str(path))
    assert not model.training
    for name, tensor in source.dust3r_state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    for view in ("1", "2"):
        pointmap = getattr(model, f"downstream_head{view}").dpt.state_dict()
        motion = getattr(model, f"motion_head{view}").dpt.state_dict()
        assert all(torch.equal(pointmap[k], motion[k]) for k in pointmap)

    view1, view2 = _views(2, (32, 48), (32, 48))
    with torch.no_grad():
        expected = source(view1, view2)
        got = model(view1, view2)
    for res_expected, res_got in zip(expected, got, strict=True):
        assert res_expected.keys() == res_got.keys()
        for key in res_expected:
            torch.testing.assert_close(res_got[key], res_expected[key], rtol=0, atol=0)

    again = load_dust3r(str(path))
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), (
            f"motion init not deterministic: {name}"
        )


def test_output_shapes_including_mixed_orientation(small_model):
    model = small_model
    view1, view2 = _views(3, (32, 48), (48, 32))
    with torch.no_grad():
        res1, res2 = model(view1, view2, query_times=torch.tensor([0.0, 0.5, 1.0]))
    assert set(res1) == {"pts3d", "conf", "motion", "motion_conf"}
    assert set(res2) == {"pts3d_in_other_view", "conf", "motion", "motion_conf"}
    assert res1["pts3d"].shape == res1["motion"].shape == (3, 32, 48, 3)
    assert res1["conf"].shape == res1["motion_conf"].shape == (3, 32, 48)
    assert res2["pts3d_in_other_view"].shape == res2["motion"].shape == (3, 48, 32, 3)
    assert res2["conf"].shape == res2["motion_conf"].shape == (3, 48, 32)
    for res in (res1, res2):
        assert all(torch.isfinite(v).all() for v in res.values())
        assert (res["conf"] >= 1).all() and (res["motion_conf"] >= 1).all()

    with torch.no_grad():
        plain1, plain2 = model(view1, view2)
    assert set(plain1) == {"pts3d", "conf"} and set(plain2) == {"pts3d_in_other_view", "conf"}
    torch.testing.assert_close(plain1["pts3d"], res1["pts3d"])


def test_motion_depends_on_query_time_and_pointmaps_do_not(small_model):
    model = small_model
    view1, view2 = _views(1, (32, 32), (32, 32), seed=3)
    with torch.no_grad():
        early = model(view1, view2, query_times=torch.tensor([0.1]))
        late = model(view1, view2, query_times=torch.tensor([0.9]))
        both = model(
            {k: v.repeat(2, 1, 1, 1) if k == "img" else v.repeat(2, 1) for k, v in view1.items()},
            {k: v.repeat(2, 1, 1, 1) if k == "img" else v.repeat(2, 1) for k, v in view2.items()},
            query_times=torch.tensor([0.1, 0.9]),
        )
    for view in range(2):
        assert (early[view]["motion"] - late[view]["motion"]).abs().max() > 1e-3
        torch.testing.assert_close(early[view]["conf"], late[view]["conf"], rtol=0, atol=0)
        torch.testing.assert_close(both[view]["motion"][0], early[view]["motion"][0])
        torch.testing.assert_close(both[view]["motion"][1], late[view]["motion"][0])


def test_own_checkpoint_round_trips_everything(small_model, tmp_path):
    model = copy.deepcopy(small_model)
    _randomise(model.motion_head2, seed=7)
    target = tmp_path / "ours" / "dynadust3r.pth"
    save_dynadust3r(model, str(target), epoch=3)

    raw = torch.load(target, weights_only=True)
    assert isinstance(raw["args"], dict) and raw["epoch"] == 3
    restored = load_dust3r(str(target))
    assert restored.config == model.config
    assert restored.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name

    view1, view2 = _views(1, (32, 48), (32, 48), seed=5)
    times = torch.tensor([0.3])
    with torch.no_grad():
        for a, b in zip(model(view1, view2, times), restored(view1, view2, times), strict=True):
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_wrong_files_raise_checkpoint_error(tiny_official, tmp_path):
    path, source = tiny_official
    weights = source.dust3r_state_dict()

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    linear = tmp_path / "linear.pth"
    _write_official(linear, TINY_ARGS.replace("head_type='dpt'", "head_type='linear'"), weights)
    missing = tmp_path / "missing.pth"
    _write_official(
        missing, TINY_ARGS, {k: v for k, v in weights.items() if "dec_blocks2" not in k}
    )
    resized = tmp_path / "resized.pth"
    _write_official(resized, TINY_ARGS.replace("enc_embed_dim=32", "enc_embed_dim=64"), weights)
    code = tmp_path / "code.pth"
    _write_official(code, "__import__('os').system('true')", weights)
    bare = tmp_path / "bare_state_dict.pth"
    torch.save(weights, bare)

    for bad in (garbage, linear, missing, resized, code, bare, tmp_path / "absent.pth"):
        with pytest.raises(CheckpointError):
            load_dust3r(str(bad))


def test_config_parsing_defaults_and_rejections():
    config = config_from_dust3r_args(TINY_ARGS)
    assert (config.enc_embed_dim, config.enc_depth, config.dec_depth) == (32, 2, 4)
    assert config.rope_freq == 100.0 and config.conf_mode == ("exp", 1.0, float("inf"))
    # omitted arguments take AsymmetricCroCo3DStereo / CroCoNet defaults
    short = config_from_dust3r_args("AsymmetricCroCo3DStereo(pos_embed='RoPE10', head_type='dpt')")
    assert (short.enc_embed_dim, short.dec_embed_dim, short.dec_depth) == (768, 512, 8)
    assert short.rope_freq == 10.0
    for bad in (
        "AsymmetricCroCo3DStereo(head_type='dpt')",  # cosine position embedding
        "AsymmetricCroCo3DStereo(pos_embed='RoPE100', head_type='dpt', bogus=1)",
        "CroCoNet(pos_embed='RoPE100', head_type='dpt')",
        "AsymmetricCroCo3DStereo(pos_embed='RoPE100', head_type='dpt', enc_depth=2 + 2)",
        "AsymmetricCroCo3DStereo(",
    ):
        with pytest.raises(CheckpointError):
            config_from_dust3r_args(bad)


def test_rope_attention_scores_depend_only_on_relative_position():
    head_dim, freq = 16, 100.0
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, head_dim, generator=generator)

    def score(q_pos: tuple[int, int], k_pos: tuple[int, int]) -> torch.Tensor:
        positions = torch.tensor([[q_pos, k_pos]])
        cos, sin = rope_tables(positions, head_dim, freq)
        rotated = []
        for index, vector in ((0, q), (1, k)):
            half = vector.view(2, 2, -1)
            partner = torch.stack((-half[:, 1], half[:, 0]), dim=1).flatten()
            rotated.append(vector * cos[0, 0, index] + partner * sin[0, 0, index])
        return rotated[0] @ rotated[1]

    reference = score((1, 2), (4, 7))
    torch.testing.assert_close(score((11, 5), (14, 10)), reference)
    assert not torch.allclose(score((1, 2), (4, 8)), reference)
    assert not torch.allclose(score((1, 2), (5, 7)), reference)
