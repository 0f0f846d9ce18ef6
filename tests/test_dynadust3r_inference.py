"""DynaDUSt3R inference: `s4d predict`, the Ray actor, EPE metrics and `s4d eval-dynadust3r`."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from s4d_ray.cli import main
from s4d_ray.dynadust3r.evaluate import endpoint_summary
from s4d_ray.dynadust3r.inference import predict_pairs, prepare_image
from s4d_ray.dynadust3r.loss import least_squares_scale, moved_point_errors
from s4d_ray.dynadust3r.train import initial_model
from s4d_ray.models.dynadust3r import save_dynadust3r

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny random DynaDUSt3R checkpoint in our format."""
    path = tmp_path_factory.mktemp("dyna") / "tiny.pth"
    save_dynadust3r(initial_model(None, seed=3), str(path), epoch=7)
    return str(path)


def _write_png(path, image: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def test_predict_from_images_writes_npz_and_png(checkpoint, tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        _write_png(tmp_path / name, rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    out = tmp_path / "pred"
    code = main(
        ["predict", "--checkpoint", checkpoint, "--images", str(tmp_path / "a.png"),
         str(tmp_path / "b.png"), "--time", "0.25", "--out", str(out), "--size", "64",
         "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    with np.load(out / "prediction.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert arrays["image_1"].shape == (48, 64, 3)  # long side 64, 48 = 3 patches of 16
    for view in (1, 2):
        assert arrays[f"pts3d_{view}"].shape == arrays[f"motion_{view}"].shape == (48, 64, 3)
        assert arrays[f"conf_{view}"].shape == arrays[f"motion_conf_{view}"].shape == (48, 64)
        assert np.isfinite(arrays[f"pts3d_{view}"]).all() and (arrays[f"conf_{view}"] >= 1).all()
    assert float(arrays["query_time"]) == 0.25
    picture = cv2.imread(str(out / "prediction.png"))
    assert picture.shape == (48, 3 * 64, 3)


def test_predict_from_video_frames(checkpoint, synth_dir, tmp_path) -> None:
    video = next((synth_dir / "raw").glob("*.mp4"))
    code = main(
        ["predict", "--checkpoint", checkpoint, "--video", str(video), "--pair", "0", "4",
         "--out", str(tmp_path), "--size", "32", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    with np.load(tmp_path / "prediction.npz", allow_pickle=False) as npz:
        assert npz["pts3d_1"].shape == (16, 32, 3)  # 2:1 side-by-side VR180 frame
        assert float(npz["query_time"]) == 0.5
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", checkpoint, "--out", str(tmp_path)])  # no input


def test_prepare_image_keeps_patch_multiples() -> None:
    image = np.zeros((100, 333, 3), np.uint8)
    assert prepare_image(image, 128).shape == (32, 128, 3)
    assert prepare_image(image, 512).shape == (144, 512, 3)


def test_endpoint_metrics_and_scale_alignment() -> None:
    errors = np.array([0.01, 0.04, 0.07, 0.2])
    assert endpoint_summary(errors) == pytest.approx(
        {"epe_m": 0.08, "under_5cm": 0.5, "under_10cm": 0.75}
    )
    gen = torch.Generator().manual_seed(0)
    gt1, gt2 = torch.rand(2, 1, 4, 4, 3, generator=gen) * 5 + 1
    motion1, motion2 = torch.rand(2, 1, 4, 4, 3, generator=gen) * 0.1
    mask = torch.rand(1, 4, 4, generator=gen) > 0.3
    target = {
        "pts1": gt1, "valid1": mask, "motion1": motion1, "motion_valid1": mask,
        "pts2": gt2, "valid2": ~mask, "motion2": motion2, "motion_valid2": ~mask,
    }  # fmt: skip
    res1 = {"pts3d": gt1 / 3, "motion": motion1 / 3}  # right up to a scale of 3
    res2 = {"pts3d_in_other_view": gt2 / 3, "motion": motion2 / 3}
    scale = least_squares_scale(res1, res2, target)
    assert scale.item() == pytest.approx(3.0, rel=1e-5)
    assert moved_point_errors(res1, res2, target, scale).max() < 1e-5
    unaligned = moved_point_errors(res1, res2, target)
    assert unaligned.numel() == 16 and unaligned.min() > 0.5


@pytest.mark.slow
def test_actor_in_ray_data_actor_pool(checkpoint) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    from actors.dynadust3r import DynaDUSt3RActor

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (2, 6, 32, 32, 3), dtype=np.uint8)
    times = np.linspace(0, 1, 6).astype(np.float32)
    rows = [
        {"image1": images[0, n], "image2": images[1, n], "query_time": times[n]} for n in range(6)
    ]
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        out = (
            ray.data.from_items(rows)
            .map_batches(
                DynaDUSt3RActor,
                fn_constructor_kwargs={"checkpoint": checkpoint, "device": "cpu"},
                compute=ActorPoolStrategy(size=1),
                batch_size=3,
                num_cpus=0.5,
            )
            .take_all()
        )
    finally:
        ray.shutdown()
    out.sort(key=lambda row: float(row["query_time"]))
    model = initial_model(None, seed=3).eval()
    direct = predict_pairs(model, images[0], images[1], times)
    for n, row in enumerate(out):
        assert row["pts3d_2"].shape == (32, 32, 3) and row["motion_conf_1"].shape == (32, 32)
        np.testing.assert_allclose(row["motion_1"], direct["motion_1"][n], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(row["pts3d_2"], direct["pts3d_2"][n], rtol=1e-4, atol=1e-5)


def test_eval_cli_prints_epe_and_fractions(checkpoint, synth_dir, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    code = main(
        ["eval-dynadust3r", "--checkpoint", checkpoint, "--npz", str(synth_dir / "npz"),
         "--videos", str(synth_dir / "raw"), "--limit", "2", "--image-size", "32",
         "--min-tracks", "16", "--pairs-per-clip", "2", "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "EPE" in printed and "<5cm" in printed and "<10cm" in printed
    result = json.loads(out.read_text())
    assert result["pairs"] == 4 and result["points"] > 50 and not result["align_scale"]
    assert result["epe_m"] > 0 and 0 <= result["under_5cm"] <= result["under_10cm"] <= 1
    assert result["filters"]["samples"] == 4
