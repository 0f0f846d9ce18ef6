"""TracksTo4D training: samples from projected release tracks, losses, learning, Ray Train job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s4d_ray.cli import job_main
from s4d_ray.geometry.camera import rotation_matrix
from s4d_ray.io.clip_io import read_clip
from s4d_ray.models.tracksto4d import TracksTo4D, load_tracksto4d
from s4d_ray.tracksto4d.data import FilterCounts, SampleConfig, clip_tracks, samples_from_uris
from s4d_ray.tracksto4d.evaluate import evaluate_prediction
from s4d_ray.tracksto4d.inference import InferenceConfig, predict_clip
from s4d_ray.tracksto4d.loss import LossConfig, supervised_loss, tracksto4d_loss
from s4d_ray.tracksto4d.train import TINY_CONFIG, initial_model, read_latest, to_batch, train_local

SAMPLES = SampleConfig(frames=12, tracks=64, min_visible=6, samples_per_clip=16)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def samples(synth_dir):
    counts = FilterCounts()
    uris = [str(p) for p in sorted((synth_dir / "npz").glob("*.npz"))]
    return samples_from_uris(uris, SAMPLES, counts), counts


def test_samples_from_release_clips_and_bad_clips_counted(synth_dir, samples, tmp_path):
    rows, counts = samples
    assert counts.clips == 4 and counts.samples == len(rows) > 0
    row = rows[0]
    assert row["tracks"].shape == (64, 3, 12) and row["tracks"].dtype == np.float32
    assert row["visible"].sum(axis=1).min() >= 6
    assert np.array_equal(row["tracks"][:, 2] > 0, row["visible"])
    z = row["points_camera"][..., 2][row["visible"]]
    assert z.min() > 0.05  # visible ground truth is in front of its camera
    assert set(np.unique(row["moving"])) <= {0.0, 1.0}
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not an npz")
    good = sorted((synth_dir / "npz").glob("*.npz"))[0]
    short = SampleConfig(frames=40, tracks=64)
    counts = FilterCounts()
    assert samples_from_uris([str(broken), str(good)], short, counts) == []
    assert counts.clips_unreadable == 1 and counts.clips_too_short == 1 and counts.clips == 2


def _ground_truth_outputs(batch: dict, sim_scale: float, seed: int) -> dict:
    """Model-like outputs that are the ground truth in another world gauge and scale."""
    rot = torch.tensor(rotation_matrix(np.array([0.3, 1.0, -0.2]), 0.7 + seed), dtype=torch.float32)
    shift = torch.tensor([1.0, -2.0, 0.5])
    c2w = batch["camera2world"]
    rotations = rot @ c2w[..., :3, :3]
    translations = sim_scale * (c2w[..., :3, 3] @ rot.T) + shift
    cam = batch["points_camera"].permute(0, 2, 3, 1) * sim_scale  # [B,F,3,N]
    points = rotations @ cam + translations[..., None]
    moving = batch["moving"]
    return {
        "rotations": rotations,
        "translations": translations,
        "points3d": points,
        "points3d_static": points,
        "movement": torch.where(moving > 0, 1e6, 1e-6),
    }


def test_supervised_loss_is_zero_for_the_truth_in_any_gauge_and_scale(samples):
    rows, _ = samples
    batch = to_batch(rows[:3], torch.device("cpu"))
    batch["visible"] = batch["visible"].bool()
    for scale, seed in ((1.0, 0), (0.2, 1), (7.0, 2)):
        loss, parts = supervised_loss(
            _ground_truth_outputs(batch, scale, seed), batch, LossConfig()
        )
        assert parts["points"] < 1e-5 and parts["rotation"] < 1e-10 and parts["translation"] < 1e-5
        assert parts["movement"] < 1e-5
    wrong = _ground_truth_outputs(batch, 1.0, 0)
    wrong["translations"] = wrong["translations"] * 1.5  # cameras moving too far for the scene
    wrong_parts = supervised_loss(wrong, batch, LossConfig())[1]
    assert wrong_parts["translation"] > 1e-3 and wrong_parts["points"] > 1e-3


def test_official_loss_parts_and_warmup(samples):
    rows, _ = samples
    batch = to_batch(rows[:2], torch.device("cpu"))
    batch["visible"] = batch["visible"].bool()
    torch.manual_seed(0)
    out = TracksTo4D(TINY_CONFIG)(batch["tracks"])
    loss, parts = tracksto4d_loss(out, batch, LossConfig(supervised=False))
    assert set(parts) == {"reprojection", "static", "negative_depth", "sparsity"}
    assert torch.isfinite(loss)
    loss.backward()
    warm, _ = tracksto4d_loss(out, batch, LossConfig(), warmup=True)
    assert warm.item() > 0


def test_batch_loss_is_the_mean_of_the_samples_losses(samples):
    """Every term per sample, then the batch mean (the official training takes one sample a
    step): what DDP's gradient average over workers needs."""
    rows, _ = samples
    torch.manual_seed(0)
    model = TracksTo4D(TINY_CONFIG)
    for warmup in (False, True):
        batch = to_batch(rows[:3], torch.device("cpu"))
        batch["visible"] = batch["visible"].bool()
        total, _ = tracksto4d_loss(model(batch["tracks"]), batch, LossConfig(), warmup)
        alone = []
        for row in rows[:3]:
            one = to_batch([row], torch.device("cpu"))
            one["visible"] = one["visible"].bool()
            alone.append(float(tracksto4d_loss(model(one["tracks"]), one, LossConfig(), warmup)[0]))
        assert float(total) == pytest.approx(np.mean(alone), rel=1e-5)


def _evaluate(model: TracksTo4D, synth_dir) -> dict[str, float]:
    model.eval()
    config = InferenceConfig(window=12, overlap=4, max_tracks=200, min_visible=6)
    results = []
    for uri in sorted((synth_dir / "npz").glob("*.npz")):
        tracks = clip_tracks(read_clip(str(uri)))
        results.append(evaluate_prediction(tracks, predict_clip(model, tracks, config)))
    return {
        "ate_m": float(np.mean([r["ate_m"] for r in results])),
        "abs_rel": float(np.mean([r["per_frame"]["abs_rel"] for r in results])),
    }


@pytest.mark.slow
def test_training_lowers_ate_and_abs_rel(synth_dir, samples):
    """~20-30 s: a tiny model, 200 supervised steps (after the official warm-up) on 4 synth clips."""
    rows, _ = samples
    model = initial_model(None, seed=0)
    before = _evaluate(model, synth_dir)
    history = train_local(
        model, rows, 200, LossConfig(supervised=True), batch_size=2, lr=1e-3, warmup_steps=30
    )
    after = _evaluate(model, synth_dir)
    assert np.mean([h["loss"] for h in history[-20:]]) < history[30]["loss"]
    assert after["ate_m"] < 0.8 * before["ate_m"], (before, after)
    assert after["abs_rel"] < 0.8 * before["abs_rel"], (before, after)


@pytest.mark.slow
def test_ray_train_job_checkpoints_and_resumes(synth_dir, tmp_path):
    """Ray Train job: 2 steps, then a re-run with the same folder continues to 4."""
    import ray

    checkpoints = str(tmp_path / "ckpt")

    def job(steps: int) -> None:
        args = [
            "--npz", str(synth_dir / "npz"), "--checkpoint-dir", checkpoints, "--tiny",
            "--steps", str(steps), "--batch-size", "2", "--frames", "12", "--tracks", "32",
            "--min-visible", "6", "--samples-per-clip", "2", "--limit", "2",
            "--checkpoint-every", "2", "--log-every", "1", "--torch-threads", "1",
        ]  # fmt: skip
        assert job_main("jobs/train_tracksto4d.py", args) == 0

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        job(2)
        job(4)
    finally:
        ray.shutdown()
    latest = read_latest(checkpoints)
    assert latest["step"] == 4 and latest["model"] == "model_step00000004.pt"
    assert [(m["step"], m["start_step"]) for m in latest["history"]] == [
        (1, 0), (2, 0), (3, 2), (4, 2)
    ]  # fmt: skip
    model, checkpoint = load_tracksto4d(
        str(tmp_path / "ckpt" / "model_step00000004.pt"), with_checkpoint=True
    )
    assert model.config == TINY_CONFIG and checkpoint["epoch"] == 4
    adam_steps = {int(s["step"]) for s in checkpoint["optimizer_state_dict"]["state"].values()}
    assert adam_steps == {4}  # the optimizer state was resumed, not restarted
