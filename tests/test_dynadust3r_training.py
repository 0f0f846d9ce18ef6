"""DynaDUSt3R training: sample geometry, filters, the loss by hand, tiny training, resume."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
import torch

from s4d_ray.dynadust3r.command import add_train_arguments
from s4d_ray.dynadust3r.data import (
    FilterCounts,
    SampleConfig,
    build_sample,
    clip_samples,
    draw_triplets,
    iter_samples,
    select_triplets,
    splat_nearest,
)
from s4d_ray.dynadust3r.evaluate import collate, evaluate_model
from s4d_ray.dynadust3r.loss import LossConfig, dynadust3r_loss
from s4d_ray.dynadust3r.train import (
    TINY_CONFIG,
    TrainSettings,
    initial_model,
    make_optimizer,
    read_latest,
    restore,
    save_checkpoint,
    train,
    train_step,
)
from s4d_ray.geometry.camera import intrinsics, invert_poses, rotation_matrix
from s4d_ray.io.clip_io import read_clip, write_clip
from s4d_ray.io.rectify import rectify_to_files
from s4d_ray.models.dynadust3r import load_dust3r
from s4d_ray.train_loop import settings_values

torch.set_num_threads(2)

SIZE = 32
CONFIG = SampleConfig(image_size=SIZE, pairs_per_clip=6, min_tracks=16)


@pytest.fixture(scope="module")
def samples(synth_dir) -> list[dict]:
    counts = FilterCounts()
    out = list(
        iter_samples(str(synth_dir / "npz"), str(synth_dir / "raw"), config=CONFIG, counts=counts)
    )
    assert counts.samples == len(out) == 24 and counts.clips_static == 0
    return out


def test_a_corrupt_clip_is_skipped_and_counted(synth_dir, tmp_path) -> None:
    """Training and evaluation read samples through `iter_samples`: a bad clip (unreadable
    npz, video missing) is skipped and counted; the good clip's samples still come."""
    import shutil

    good = sorted((synth_dir / "npz").glob("*.npz"))[0]
    npz = tmp_path / "npz"
    npz.mkdir()
    shutil.copy(good, npz)
    (npz / "brokenvid00_100000.npz").write_bytes(b"not a zip file")
    record = read_clip(str(good))
    record.video_id, record.name = "missingvid0", f"missingvid0_{record.timestamps[0]}"
    write_clip(record, str(npz / f"{record.name}.npz"))
    counts = FilterCounts()
    config = SampleConfig(image_size=SIZE, pairs_per_clip=2, min_tracks=16)
    out = list(iter_samples(str(npz), str(synth_dir / "raw"), config=config, counts=counts))
    assert len(out) == counts.samples == 2 and {s["clip_id"] for s in out} == {good.stem}
    assert counts.clips_failed == 2
    assert set(counts.failures) == {"brokenvid00_100000", record.name}
    assert "missingvid0" in counts.failures[record.name]


def test_triplets_respect_gap_and_query_range() -> None:
    rng = np.random.default_rng(0)
    for frames in (3, 12, 200):
        triplets = draw_triplets(frames, 500, rng)
        i, j, k = triplets.T
        gaps = j - i
        assert gaps.min() >= 2 and gaps.max() <= min(60, frames - 1)
        assert (i >= 0).all() and (j < frames).all() and ((i <= k) & (k <= j)).all()
    assert draw_triplets(200, 2000, rng)[:, 1].max() > 150  # pairs reach late frames
    assert draw_triplets(2, 10, rng).shape == (0, 3)  # too short for a gap of 2


def test_nearest_point_wins_a_pixel() -> None:
    k = intrinsics(SIZE, SIZE, 60.0)
    ray = np.array([0.1, -0.05, 1.0])
    points = np.stack([ray * 5.0, ray * 2.0, ray * 9.0, [0, 0, -1.0]])  # last: behind camera
    labels = np.arange(4, dtype=np.float32)[:, None]
    (label_map,), hit = splat_nearest(points, [labels], k, SIZE)
    assert hit.sum() == 1 and label_map[hit][0, 0] == 1.0


def _moving_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 frames, a camera that turns and moves; 200 static points and 1 point moving +x."""
    rng = np.random.default_rng(3)
    static = rng.uniform([-2, -2, 4], [2, 2, 8], size=(200, 3))
    tracks = np.repeat(static[:, None], 3, axis=1)
    mover = np.array([[0.3, 0.2, 5.0], [0.5, 0.2, 5.0], [0.7, 0.2, 5.0]])
    tracks = np.concatenate([tracks, mover[None]], axis=0)
    camera2world = np.zeros((3, 3, 4))
    for t in range(3):
        camera2world[t, :, :3] = rotation_matrix(np.array([0, 1.0, 0]), 0.03 * t)
        camera2world[t, :, 3] = [0.1 * t, 0.0, 0.05 * t]
    return tracks, camera2world, invert_poses(camera2world)


def test_static_points_have_zero_motion_and_movers_their_displacement() -> None:
    tracks, camera2world, world2camera = _moving_scene()
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    sample = build_sample(image, image, tracks, world2camera, (0, 2, 1), SIZE)
    assert sample["query_time"] == pytest.approx(0.5)
    rot_i = world2camera[0, :, :3]
    for view, frame in (("1", 0), ("2", 2)):
        valid = sample[f"motion_valid{view}"]
        motion = sample[f"motion{view}"][valid]
        points = sample[f"pts{view}"][valid]
        mover_at_frame = world2camera[0, :, :3] @ tracks[-1, frame] + world2camera[0, :, 3]
        is_mover = np.linalg.norm(points - mover_at_frame, axis=-1) < 1e-4
        assert is_mover.sum() == 1 and valid.sum() > 100
        assert np.abs(motion[~is_mover]).max() < 1e-5  # static: no motion despite the camera
        expected = rot_i @ (tracks[-1, 1] - tracks[-1, frame])  # world displacement in cam 0
        np.testing.assert_allclose(motion[is_mover][0], expected, atol=1e-5)


def test_targets_project_back_to_their_pixels(samples, synth_dir) -> None:
    k = intrinsics(SIZE, SIZE, 60.0)
    records = {}
    for sample in samples[:6]:
        clip_id = sample["clip_id"]
        if clip_id not in records:
            records[clip_id] = read_clip(str(synth_dir / "npz" / f"{clip_id}.npz"))
        i, j, _ = sample["frame_indices"]
        c2w = records[clip_id].camera2world.astype(np.float64)
        w2c_j = invert_poses(c2w[j])
        for view, to_own in (("1", None), ("2", (c2w[i], w2c_j))):
            rows, cols = np.nonzero(sample[f"valid{view}"])
            points = sample[f"pts{view}"][rows, cols].astype(np.float64)
            if to_own is not None:  # view 2's targets live in camera i: take them to camera j
                world = points @ to_own[0][:, :3].T + to_own[0][:, 3]
                points = world @ to_own[1][:, :3].T + to_own[1][:, 3]
            u = points[:, 0] / points[:, 2] * k[0, 0] + k[0, 2]
            v = points[:, 1] / points[:, 2] * k[1, 1] + k[1, 2]
            assert len(rows) > 16
            assert np.abs(u - (cols + 0.5)).max() <= 0.5 + 1e-3
            assert np.abs(v - (rows + 0.5)).max() <= 0.5 + 1e-3
        assert sample["motion_valid1"].sum() <= sample["valid1"].sum()


def test_filters_count_static_clips_and_sparse_pairs() -> None:
    tracks, _, _ = _moving_scene()
    counts = FilterCounts()
    static = tracks[:-1]
    assert len(select_triplets(static, "a_1", SampleConfig(pairs_per_clip=4), counts)) == 0
    assert counts.clips_static == 1  # 1 mover in 201 tracks: below the default 1 %
    kept = select_triplets(
        tracks,
        "a_1",
        SampleConfig(pairs_per_clip=4, min_tracks=500, min_moving_fraction=0.004),
        counts,
    )
    assert len(kept) == 0 and counts.pairs_drawn == 4 and counts.pairs_few_tracks == 4
    kept = select_triplets(
        tracks,
        "a_1",
        SampleConfig(pairs_per_clip=4, min_tracks=50, min_moving_fraction=0.004),
        counts,
    )
    assert len(kept) == 4


def _hand_example() -> tuple[dict, dict, dict]:
    """B=1, 1×2 images; view 1 has both pixels valid, view 2 one pixel, motion one pixel."""
    res1 = {
        "pts3d": torch.tensor([[[[1.0, 0, 2], [0, 1, 4]]]]),
        "conf": torch.tensor([[[2.0, 1.5]]]),
        "motion": torch.tensor([[[[0.5, 0, 0], [0, 0, 0]]]]),
        "motion_conf": torch.tensor([[[3.0, 1.0]]]),
    }
    res2 = {
        "pts3d_in_other_view": torch.tensor([[[[0, 0, 3.0], [9, 9, 9]]]]),
        "conf": torch.tensor([[[1.0, 7.0]]]),
        "motion": torch.tensor([[[[0, 0, 1.0], [5, 5, 5]]]]),
        "motion_conf": torch.tensor([[[2.0, 9.0]]]),
    }
    target = {
        "pts1": torch.tensor([[[[1.0, 0, 3], [0, 1, 4]]]]),
        "valid1": torch.tensor([[[True, True]]]),
        "motion1": torch.tensor([[[[1.0, 0, 0], [0, 0, 0]]]]),
        "motion_valid1": torch.tensor([[[True, False]]]),
        "pts2": torch.tensor([[[[0, 0, 4.0], [0, 0, 0]]]]),
        "valid2": torch.tensor([[[True, False]]]),
        "motion2": torch.tensor([[[[0, 0, 0.0], [0, 0, 0]]]]),
        "motion_valid2": torch.tensor([[[True, False]]]),
    }
    return res1, res2, target


def test_loss_matches_hand_computation() -> None:
    res1, res2, target = _hand_example()
    a = 0.2
    # metric: view 1 errors 1 and 0; view 2 error 1; moved: view 1 ‖(1.5,0,2)-(2,0,3)‖, view 2 0
    pts_1 = ((2 * 1 - a * np.log(2)) + (1.5 * 0 - a * np.log(1.5))) / 2
    pts_2 = 1 * 1 - a * np.log(1)
    moved_1 = 3 * np.sqrt(0.25 + 1) - a * np.log(3)
    moved_2 = 2 * 0 - a * np.log(2)
    total, parts = dynadust3r_loss(res1, res2, target, LossConfig(alpha=a))
    assert parts == pytest.approx(
        {"pts_1": pts_1, "pts_2": pts_2, "moved_1": moved_1, "moved_2": moved_2}, rel=1e-6
    )
    assert float(total) == pytest.approx(pts_1 + pts_2 + moved_1 + moved_2, rel=1e-6)

    # avg_dis: scales = mean norm over the 3 valid pointmap pixels of each
    pred_scale = (np.sqrt(5) + np.sqrt(17) + 3) / 3
    gt_scale = (np.sqrt(10) + np.sqrt(17) + 4) / 3
    p1, g1 = np.array([1.0, 0, 2]) / pred_scale, np.array([1.0, 0, 3]) / gt_scale
    p1b, g1b = np.array([0.0, 1, 4]) / pred_scale, np.array([0.0, 1, 4]) / gt_scale
    expected_pts_1 = (
        2 * np.linalg.norm(p1 - g1) - a * np.log(2) + 1.5 * np.linalg.norm(p1b - g1b)
    ) / 2 - a * np.log(1.5) / 2
    moved = np.linalg.norm(np.array([1.5, 0, 2]) / pred_scale - np.array([2.0, 0, 3]) / gt_scale)
    _, parts = dynadust3r_loss(res1, res2, target, LossConfig(norm_mode="avg_dis", alpha=a))
    assert parts["pts_1"] == pytest.approx(expected_pts_1, rel=1e-6)
    assert parts["moved_1"] == pytest.approx(3 * moved - a * np.log(3), rel=1e-6)


def test_batch_loss_is_the_mean_of_the_samples_losses() -> None:
    """Per-sample means, then the batch mean: what DDP's gradient average over workers needs
    (view 1 has 2 valid pixels in one sample, 1 in the other: a pooled mean weights them 2:1)."""
    res1, res2, target = _hand_example()
    flipped = {k: v.flip(2) for k, v in target.items()}
    flipped["valid1"] = torch.tensor([[[False, True]]])
    pair = (
        {k: torch.cat([v, v]) for k, v in res1.items()},
        {k: torch.cat([v, v]) for k, v in res2.items()},
        {k: torch.cat([target[k], flipped[k]]) for k in target},
    )
    for mode in ("metric", "avg_dis"):
        config = LossConfig(norm_mode=mode)
        total, parts = dynadust3r_loss(*pair, config)
        one, one_parts = dynadust3r_loss(res1, res2, target, config)
        other, other_parts = dynadust3r_loss(res1, res2, flipped, config)
        assert float(total) == pytest.approx((float(one) + float(other)) / 2, rel=1e-6)
        for name in parts:
            assert parts[name] == pytest.approx((one_parts[name] + other_parts[name]) / 2)


def test_avg_dis_loss_ignores_prediction_scale_metric_does_not() -> None:
    res1, res2, target = _hand_example()
    scaled1 = {**res1, "pts3d": res1["pts3d"] * 4, "motion": res1["motion"] * 4}
    scaled2 = {
        **res2,
        "pts3d_in_other_view": res2["pts3d_in_other_view"] * 4,
        "motion": res2["motion"] * 4,
    }
    for mode, same in (("avg_dis", True), ("metric", False)):
        base, _ = dynadust3r_loss(res1, res2, target, LossConfig(norm_mode=mode))
        scaled, _ = dynadust3r_loss(scaled1, scaled2, target, LossConfig(norm_mode=mode))
        assert (float(base) == pytest.approx(float(scaled), rel=1e-5)) is same


@pytest.mark.slow
def test_tiny_training_lowers_loss_and_epe(samples) -> None:
    """300 AdamW steps of the tiny model on the synthetic pairs (CPU, one thread: on a busy
    2-core machine two threads are ~10x slower for these small kernels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = initial_model(None, seed=0)
        optimizer = make_optimizer(model, lr=2e-3, weight_decay=0.0)
        device = torch.device("cpu")
        before = evaluate_model(model, samples, batch_size=8)
        rng = np.random.default_rng(0)
        losses = []
        start = time.perf_counter()
        for _ in range(300):
            chosen = rng.choice(len(samples), 4, replace=False)
            batch = collate([samples[n] for n in chosen], device)
            losses.append(train_step(model, optimizer, batch, LossConfig(), device)["loss"])
        seconds = time.perf_counter() - start
        after = evaluate_model(model, samples, batch_size=8)
    finally:
        torch.set_num_threads(threads)
    print(
        f"\ntiny training: loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}, "
        f"EPE {before['epe_m']:.3f} -> {after['epe_m']:.3f} m, "
        f"<10cm {before['under_10cm']:.3f} -> {after['under_10cm']:.3f}, "
        f"{300 * 4 / seconds:.1f} samples/s"
    )
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert after["epe_m"] < 0.5 * before["epe_m"]


def test_rectified_videos_give_the_same_samples(samples, synth_dir, tmp_path) -> None:
    """Samples from `s4d rectify` outputs (lossy mp4) match those rectified from the raw video."""
    clip_id = samples[0]["clip_id"]
    rectify_to_files(clip_id, str(synth_dir / "npz"), str(synth_dir / "raw"), str(tmp_path))
    npz = str(synth_dir / "npz" / f"{clip_id}.npz")
    from_files = list(clip_samples(npz, rectified_uri=str(tmp_path), config=CONFIG))
    from_raw = [s for s in samples if s["clip_id"] == clip_id]
    assert len(from_files) == len(from_raw) == CONFIG.pairs_per_clip
    for a, b in zip(from_files, from_raw, strict=True):
        np.testing.assert_array_equal(a["frame_indices"], b["frame_indices"])
        np.testing.assert_array_equal(a["pts2"], b["pts2"])
        difference = np.abs(a["image1"].astype(int) - b["image1"].astype(int)).mean()
        assert difference < 6.0


def test_checkpoints_rotate_and_restore(tmp_path) -> None:
    model = initial_model(None, seed=1)
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.0)
    folder = str(tmp_path)
    for step in (5, 10, 15):
        save_checkpoint(folder, model, optimizer, step, [{"step": step}], keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "latest.json",
        "model_step00000010.pth",
        "model_step00000015.pth",
        "optimizer_step00000010.pt",
        "optimizer_step00000015.pt",
    ]
    config = {"checkpoint_dir": folder, "init": None, "seed": 9, "lr": 1e-3, "weight_decay": 0.0}
    restored, _, step, history = restore(config, torch.device("cpu"))
    assert step == 15 and history == [{"step": 15}]
    for a, b in zip(model.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_training_job_resumes_from_checkpoint(synth_dir, tmp_path) -> None:
    """Ray Train run limited to 2 steps, then a re-run with the same dir continues to 4."""
    import ray

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    checkpoints = str(tmp_path / "ckpt")

    def job(steps: int) -> dict:
        args = parser.parse_args(
            [
                "--npz", str(synth_dir / "npz"), "--videos", str(synth_dir / "raw"),
                "--checkpoint-dir", checkpoints, "--tiny", "--steps", str(steps),
                "--batch-size", "2", "--image-size", str(SIZE), "--min-tracks", "16",
                "--pairs-per-clip", "2", "--limit", "2", "--checkpoint-every", "2",
                "--log-every", "1", "--torch-threads", "1", "--lr", "1e-3",
            ]
        )  # fmt: skip
        return train(TrainSettings(**settings_values(args)))

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        first = job(2)
        second = job(4)
    finally:
        ray.shutdown()
    assert first["step"] == 2 and [m["start_step"] for m in first["history"]] == [0, 0]
    assert second["step"] == 4
    assert [(m["step"], m["start_step"]) for m in second["history"]] == [
        (1, 0), (2, 0), (3, 2), (4, 2)
    ]  # fmt: skip
    assert read_latest(checkpoints)["model"] == "model_step00000004.pth"
    optimizer_state = torch.load(
        tmp_path / "ckpt" / "optimizer_step00000004.pt", weights_only=True
    )["state"]
    assert {int(s["step"]) for s in optimizer_state.values()} == {4}  # Adam kept counting
    at2 = load_dust3r(str(tmp_path / "ckpt" / "model_step00000002.pth"))
    at4 = load_dust3r(str(tmp_path / "ckpt" / "model_step00000004.pth"))
    assert at4.config == TINY_CONFIG
    assert any(
        not torch.equal(a, b)
        for a, b in zip(at2.state_dict().values(), at4.state_dict().values(), strict=True)
    )
