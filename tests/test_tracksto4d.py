"""TracksTo4D network: official checkpoint layout and format, parity, outputs, clear errors.

`fixtures/tracksto4d_keys.json` holds the names and shapes of NVlabs/tracks-to-4d's
`TracksTo4DNet` state dict for the released config (cats/dogs JSON: width 256, 12 frequencies,
K = 12, visibility input). `fixtures/tracksto4d_official_outputs.npz` holds the official code's
outputs (run on CPU, fp32) for `official_seeded_state()` weights and the stored tracks.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from s4d_ray.models.tracksto4d import (
    OFFICIAL_CONFIG,
    TracksInputError,
    TracksTo4D,
    TracksTo4DConfig,
    load_tracksto4d,
    save_tracksto4d,
)
from s4d_ray.models.weights import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = json.loads((FIXTURES / "tracksto4d_keys.json").read_text())
TINY = TracksTo4DConfig(
    network_width1=32,
    positional_dim=4,
    K_basis=4,
    network_depth=2,
    heads=2,
    dim_head=16,
    mlp_dim=64,
    camera_kernel_size=7,
)
OFFICIAL_JSON = {  # pretrained_checkpoints/TracksTo4D_pretrained_cats.json
    "sparsity_dynamic_coeff": 0.001, "reprojection_dynamic_coeff": 50.0,
    "dataset_folder": "cop3d/our_data_format_4",
    "dataset_folder_validation": "cop3d/our_data_format_4_validation", "network_depth": 3,
    "conv_kernel_size": 15, "network_width1": 256, "use_visible_input": 1, "positional_dim": 12,
    "K_basis": 12, "max_cameras": 50, "continue_trainining_checkpoint": "",
    "continue_trainining": 0, "weight_dynamic_reprojections": 0, "trim_high_loss": 0,
    "logs_folder": "",
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def official_seeded_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official key order: N(0, 0.05²), LayerNorm scales around 1."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in KEYS.items():
        tensor = torch.randn(shape, generator=generator) * 0.05
        is_norm = ".norm" in name or any(
            f"{part}." in name for part in ("to_patch_embedding.0", "to_patch_embedding.2", "net.0")
        )
        if is_norm and name.endswith("weight"):
            tensor = tensor + 1.0
        state[name] = tensor
    return state


def write_official(path: Path, state: dict, config: dict | None, **overrides) -> str:
    """A checkpoint as the official train.py writes it (+ the JSON beside it unless None)."""
    model = TracksTo4D(TracksTo4DConfig.from_dict(config or OFFICIAL_JSON))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    checkpoint = {
        "epoch": 100,
        "model_state_dict": state,
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": 0.25,
        **overrides,
    }
    torch.save(checkpoint, path)
    if config is not None:
        path.with_suffix(".json").write_text(json.dumps(config))
    return str(path)


def test_config_from_official_json():
    assert TracksTo4DConfig.from_dict(OFFICIAL_JSON) == OFFICIAL_CONFIG
    assert TracksTo4DConfig.from_dict(OFFICIAL_CONFIG.to_dict()) == OFFICIAL_CONFIG
    with pytest.raises(ValueError, match="unknown TracksTo4D config keys"):
        TracksTo4DConfig.from_dict({**OFFICIAL_JSON, "K_basiss": 3})


def test_state_dict_equals_official_layout():
    ours = {k: list(v.shape) for k, v in TracksTo4D(OFFICIAL_CONFIG).state_dict().items()}
    assert list(ours) == list(KEYS)
    assert ours == KEYS


def test_parity_with_official_outputs(tmp_path):
    """Official-format file of seeded weights → our outputs equal the official code's (fp32)."""
    reference = np.load(FIXTURES / "tracksto4d_official_outputs.npz", allow_pickle=False)
    uri = write_official(tmp_path / "t4d.pt", official_seeded_state(), OFFICIAL_JSON)
    model = load_tracksto4d(uri)
    with torch.no_grad():
        out = model(torch.from_numpy(reference["tracks"]))
    worst = 0.0
    for name in reference.files:
        if name in ("tracks", "focal"):
            continue
        ref = torch.from_numpy(reference[name])
        got = out[name]
        assert got.shape == ref.shape, name
        worst = max(worst, float((got - ref).abs().max() / ref.abs().max()))
    assert worst <= 1e-4, worst
    assert float(reference["focal"]) == 1.0 and torch.all(out["focal"] == 1.0)


def test_load_from_memory_uri_with_explicit_config(tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv("S4D_CACHE_DIR", str(tmp_path / "cache"))
    local = write_official(tmp_path / "t.pt", TracksTo4D(TINY).state_dict(), TINY.to_dict())
    memory = fsspec.filesystem("memory")
    memory.pipe("/t4d/model.pt", Path(local).read_bytes())
    model, checkpoint = load_tracksto4d("memory://t4d/model.pt", config=TINY, with_checkpoint=True)
    assert model.config == TINY and checkpoint["epoch"] == 100 and not model.training
    with pytest.raises(CheckpointError, match="config .* not found"):
        load_tracksto4d("memory://t4d/model.pt")  # no JSON beside it


def test_save_then_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = TracksTo4D(TINY)
    save_tracksto4d(model, str(tmp_path / "m.pt"), epoch=7, loss=1.5)
    loaded, checkpoint = load_tracksto4d(str(tmp_path / "m.pt"), with_checkpoint=True)
    assert checkpoint["epoch"] == 7 and checkpoint["loss"] == 1.5
    tracks = random_tracks(2, 10, 6)
    with torch.no_grad():
        assert torch.equal(model.eval()(tracks)["points3d"], loaded(tracks)["points3d"])


def test_missing_extra_key_and_config_mismatch_are_clear(tmp_path):
    state = TracksTo4D(TINY).state_dict()
    missing = dict(state)
    del missing["fc1.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing keys \(fc1.bias\)"):
        load_tracksto4d(write_official(tmp_path / "a.pt", missing, TINY.to_dict()))
    extra = {**state, "fc2.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(fc2.weight\)"):
        load_tracksto4d(write_official(tmp_path / "b.pt", extra, TINY.to_dict()))
    wrong_k = {**TINY.to_dict(), "K_basis": 6}
    with pytest.raises(CheckpointError, match=r"K 6.*wrong shapes \(conv_final.bias"):
        load_tracksto4d(write_official(tmp_path / "c.pt", dict(state), wrong_k))
    no_vis = {**TINY.to_dict(), "use_visible_input": 0}
    with pytest.raises(CheckpointError, match="visible input False.*to_patch_embedding.0"):
        load_tracksto4d(write_official(tmp_path / "d.pt", dict(state), no_vis))


def test_not_an_official_checkpoint_is_refused_without_unpickling(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(TracksTo4D(TINY).state_dict(), plain)
    with pytest.raises(CheckpointError, match="expected keys"):
        load_tracksto4d(str(plain), config=TINY)
    extra_top = write_official(tmp_path / "x.pt", TracksTo4D(TINY).state_dict(), None, note="hi")
    with pytest.raises(CheckpointError, match="expected keys"):
        load_tracksto4d(extra_top, config=TINY)

    class Payload:  # unpickling this would run code; weights_only must refuse it
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save(
        {"epoch": 0, "model_state_dict": Payload(), "optimizer_state_dict": {}, "loss": 0}, buffer
    )
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="safe-to-load"):
        load_tracksto4d(str(evil), config=TINY)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)


def random_tracks(batch: int, tracks: int, frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, tracks, 2, frames, generator=generator) - 0.5
    vis = (torch.rand(batch, tracks, 1, frames, generator=generator) > 0.2).float()
    return torch.cat([xy, vis], dim=2)


def test_outputs_follow_camera_to_world_convention():
    torch.manual_seed(0)
    model = TracksTo4D(TINY).eval()
    with torch.no_grad():
        out = model(random_tracks(2, 9, 5))
    rot, trans, pts = out["rotations"], out["translations"], out["points3d"]
    assert rot.shape == (2, 5, 3, 3) and trans.shape == (2, 5, 3) and pts.shape == (2, 5, 3, 9)
    eye = torch.eye(3).expand_as(rot)
    assert torch.allclose(rot @ rot.transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(2, 5), atol=1e-5)
    cam = out["points3d_camera"]
    assert torch.allclose(rot @ cam + trans[..., None], pts, atol=1e-5)  # X_w = R X_c + t
    assert torch.equal(out["depths"], cam[:, :, 2])
    visible_z = cam[:, :, 2].clamp(min=0.01)
    assert torch.allclose(out["projections"], cam[:, :, :2] / visible_z[:, :, None], atol=1e-6)
    assert out["movement"].shape == (2, 9) and bool((out["movement"] > 0).all())
    assert torch.all(out["basis_weights"][:, 0] == 1)


def test_circular_camera_conv_matches_torch_and_wraps_short_windows():
    torch.manual_seed(0)
    model = TracksTo4D(TINY).eval()
    conv = torch.nn.Conv1d(32, model.conv_final.out_channels, 7, padding=3, padding_mode="circular")
    conv.load_state_dict(model.conv_final.state_dict())
    features = torch.randn(1, 4, 8, 32)
    with torch.no_grad():
        ours = model._cameras(features)
        assert torch.allclose(ours, conv(features.mean(1).transpose(1, 2)), atol=1e-5)
        short = torch.randn(1, 4, 2, 32)  # 2 frames, padding 3: wraps more than once
        tiled = short.repeat(1, 1, 5, 1)  # the periodic signal, 10 frames
        wrapped = model._cameras(tiled)[..., 4:6]
        assert torch.allclose(model._cameras(short), wrapped, atol=1e-5)


def test_bad_tracks_are_clear_errors():
    model = TracksTo4D(TINY).eval()
    tracks = random_tracks(1, 6, 4)
    with pytest.raises(TracksInputError, match=r"\[B,N,3,F\]"):
        model(tracks[:, :, :2])
    nan = tracks.clone()
    nan[0, 2, 0, 1] = float("nan")
    with pytest.raises(TracksInputError, match="NaN"):
        model(nan)
    hidden = tracks.clone()
    hidden[:, :, 2] = 0
    with pytest.raises(TracksInputError, match="no visible"):
        model(hidden)
