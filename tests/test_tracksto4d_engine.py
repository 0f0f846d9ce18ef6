"""TracksTo4D on engine outputs: projected 2D tracks, windows, track choice, Sim(3) stitching,
the `s4d tracksto4d` / `s4d eval-tracksto4d` commands and the evaluation protocol."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from s4d_ray.cli import main as s4d
from s4d_ray.geometry.camera import rotation_matrix
from s4d_ray.geometry.pose_metrics import Similarity
from s4d_ray.io.clip_io import read_clip, write_clip
from s4d_ray.io.writer import read_parquet_clips
from s4d_ray.models.tracksto4d import TracksTo4D, save_tracksto4d
from s4d_ray.synthetic.synth import load_ground_truth
from s4d_ray.track.moving import moving_by_extent
from s4d_ray.tracksto4d.data import (
    clip_tracks,
    frame_windows,
    network_input,
    select_tracks,
)
from s4d_ray.tracksto4d.evaluate import depth_metrics, pose_metrics
from s4d_ray.tracksto4d.inference import (
    InferenceConfig,
    predict_clip,
    stitch_windows,
)
from s4d_ray.tracksto4d.train import TINY_CONFIG


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def first_clip(synth_dir):
    uri = sorted((synth_dir / "npz").glob("*.npz"))[0]
    record = read_clip(str(uri))
    return record, clip_tracks(record), load_ground_truth(str(synth_dir), record.name)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("t4d") / "tiny.pt"
    save_tracksto4d(TracksTo4D(TINY_CONFIG), str(path))
    return str(path)


def test_projected_release_tracks_give_back_the_2d_tracks(first_clip):
    record, tracks, gt = first_clip
    assert tracks.pixels.shape == gt["tracks_2d"].shape
    assert np.array_equal(tracks.visible, gt["visible"])
    error = np.abs(tracks.pixels - gt["tracks_2d"])[gt["visible"]]
    assert error.max() < 1e-3, error.max()  # px; float32 storage of the 3D points
    norm = tracks.normalized()[gt["visible"]]
    assert np.abs(norm).max() < np.tan(np.radians(30)) + 1e-6  # inside the 60° view
    moving = moving_by_extent(tracks.points_world)
    on_objects = gt["track_object_ids"] > 0
    assert moving.any() and np.mean(moving == on_objects) > 0.95


def test_frame_windows_cover_with_overlap():
    assert frame_windows(30, 50, 10) == [(0, 30)]
    windows = frame_windows(137, 50, 10)
    assert windows[0][0] == 0 and windows[-1][1] == 137
    assert all(e - s == 50 for s, e in windows)
    assert all(a[1] - b[0] >= 10 for a, b in zip(windows, windows[1:], strict=False))
    with pytest.raises(ValueError):
        frame_windows(100, 50, 50)


def test_select_tracks_spreads_over_the_image_and_prefers_long_tracks():
    rng = np.random.default_rng(0)
    n, f = 2000, 20
    pixels = np.zeros((n, f, 2))
    pixels[:1900] = rng.uniform(0, 64, (1900, 1, 2))  # crowded top-left cell
    pixels[1900:] = rng.uniform(64, 512, (100, 1, 2))  # the rest of the image
    visible = np.ones((n, f), bool)
    visible[:950, 12:] = False  # half the crowd is short-lived
    visible[1990:, 3:] = False  # seen in 3 frames: not a candidate
    picked = select_tracks(pixels, visible, max_tracks=200, min_visible=10, rng=rng)
    assert picked.size == 200 and np.unique(picked).size == 200
    assert np.sum(picked >= 1900) == 90  # every candidate outside the crowd
    crowd = picked[picked < 1900]
    assert np.all(crowd >= 950)  # long-lived first
    assert select_tracks(pixels, visible, max_tracks=5000).size == 1990


def test_network_input_fills_unseen_frames_from_nearest_seen():
    xy = np.arange(10, dtype=float).reshape(1, 5, 2)
    vis = np.array([[False, True, False, False, True]])
    xy[~vis] = np.nan
    out = network_input(xy, vis, with_visibility=True)
    assert out.shape == (1, 3, 5) and np.isfinite(out).all()
    assert out[0, 0].tolist() == [2, 2, 2, 8, 8] and out[0, 2].tolist() == [0, 1, 0, 0, 1]


def _sim(seed: int) -> Similarity:
    rng = np.random.default_rng(seed)
    rot = rotation_matrix(rng.normal(size=3), rng.uniform(0.2, 2.0))
    return Similarity(rotation=rot, translation=rng.normal(size=3), scale=rng.uniform(0.3, 3))


def test_stitching_recovers_one_trajectory_from_windows_in_random_gauges(first_clip):
    _, tracks, _ = first_clip
    windows = frame_windows(tracks.num_frames, 6, 3)
    assert len(windows) >= 3
    chosen, outputs = [], []
    for w, (s, e) in enumerate(windows):
        picked = select_tracks(tracks.pixels[:, s:e], tracks.visible[:, s:e], 150, 4)
        sim = _sim(w)  # each window in its own arbitrary similarity gauge
        world = tracks.points_world[picked, s:e]
        held = np.where(np.isfinite(world), world, np.nanmean(world, axis=1, keepdims=True))
        chosen.append(picked)
        outputs.append(
            {
                "camera2world": sim.apply_poses(tracks.camera2world[s:e]),
                "points": sim.apply_points(held),
                "depth": sim.scale * tracks.depth[picked, s:e],
                "movement": np.full(picked.size, 1.0 + w),
            }
        )
    pred = stitch_windows("c", tracks.num_frames, windows, chosen, outputs)
    metrics = pose_metrics(pred.camera2world, tracks.camera2world)
    assert metrics["ate_m"] < 1e-6 and metrics["rpe_rotation_deg"] < 1e-5
    assert metrics["rpe_translation_m"] < 1e-6
    first_scale = _sim(0).scale  # the world is window 0's gauge
    depth = depth_metrics(pred.depth, tracks.depth[pred.tracks], tracks.visible[pred.tracks], True)
    assert depth["abs_rel"] < 1e-6 and depth["scale"] == pytest.approx(1 / first_scale)


def test_predict_clip_with_a_tiny_model_covers_every_frame(first_clip):
    _, tracks, _ = first_clip
    torch.manual_seed(0)
    model = TracksTo4D(TINY_CONFIG).eval()
    config = InferenceConfig(window=8, overlap=3, max_tracks=100, min_visible=4)
    pred = predict_clip(model, tracks, config)
    assert len(pred.windows) == 2 and np.isfinite(pred.camera2world).all()
    assert pred.tracks.size <= 200 and np.all(pred.movement > 0)
    seen = np.isfinite(pred.points).all(-1)
    assert seen.any(axis=1).all()  # every estimated track has points somewhere
    rot = pred.camera2world[:, :3, :3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-5)


def test_depth_metrics_per_frame_vs_global_scale():
    truth = np.random.default_rng(0).uniform(1, 10, (50, 4))
    valid = np.ones_like(truth, bool)
    drifting = truth * np.array([1.0, 2.0, 3.0, 4.0])  # right shape, drifting scale
    per_frame = depth_metrics(drifting, truth, valid)
    assert per_frame["abs_rel"] < 1e-12 and per_frame["delta_1_25"] == 1.0
    overall = depth_metrics(drifting, truth, valid, global_scale=True)
    assert overall["abs_rel"] > 0.2 and overall["delta_1_25"] < 0.6
    flat = np.full((50, 4), 5.0)
    negative = flat.copy()
    negative[:10, 1:] = -5.0  # 10 of 50 points behind the camera in frames 1-3
    assert depth_metrics(negative, flat, valid)["delta_1_25"] == pytest.approx((1 + 3 * 0.8) / 4)


def test_cli_tracksto4d_writes_npz_and_parquet_and_eval_json(synth_dir, tiny_checkpoint, tmp_path):
    npz = str(synth_dir / "npz")
    out = tmp_path / "out"
    flags = ["--window", "8", "--overlap", "3", "--max-tracks", "64"]
    assert s4d(["tracksto4d", "--checkpoint", tiny_checkpoint, "--npz", npz, "--output", str(out), *flags]) == 0  # fmt: skip
    written = sorted((out / "npz").glob("*.npz"))
    assert len(written) == len(list((synth_dir / "npz").glob("*.npz")))
    record = read_clip(str(written[0]))
    source = read_clip(str(synth_dir / "npz" / written[0].name))
    assert record.camera2world.shape == source.camera2world.shape
    assert record.extras["movement"].shape == (record.num_tracks,)
    assert np.all(record.extras["source_track"] < source.num_tracks)
    assert json.loads(str(record.extras["metadata"]))["checkpoint"] == tiny_checkpoint
    rows = read_parquet_clips(str(out / "parquet"))
    assert sorted(r.name for r in rows) == sorted(p.stem for p in written)
    result_uri = tmp_path / "eval.json"
    assert s4d(["eval-tracksto4d", "--checkpoint", tiny_checkpoint, "--npz", npz, "--out", str(result_uri), *flags]) == 0  # fmt: skip
    result = json.loads(result_uri.read_text())
    clip = result["clips"][record.name]
    assert {"ate_m", "rpe_translation_m", "rpe_rotation_deg", "sim3_scale"} <= set(clip)
    for variant in ("per_frame", "global", "dynamic"):
        assert 0 <= clip[variant]["delta_1_25"] <= 1
    assert result["summary"]["clips"] == len(written)


def test_clip_without_usable_tracks_is_a_stage_error(first_clip, tiny_checkpoint, tmp_path, capsys):
    record, _, _ = first_clip
    c2w = record.camera2world[0]
    behind = c2w[:, 3] - 5.0 * c2w[:, 2]  # 5 m behind the first camera: never in view
    hidden = dataclasses.replace(
        record, track_coordinates=np.tile(behind, (record.track_coordinates.shape[0], 1))
    )
    write_clip(hidden, str(tmp_path / "in" / f"{record.name}.npz"))
    args = ["--npz", str(tmp_path / "in"), "--window", "8", "--overlap", "3"]
    code = s4d(
        ["tracksto4d", "--checkpoint", tiny_checkpoint, "--output", str(tmp_path / "o"), *args]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"clip {record.name!r}, stage 'tracksto4d'" in err and "no track seen" in err

    # beside a good clip: a failure row for the bad one, the good one written
    good = dataclasses.replace(record, name=f"{record.video_id}_{int(record.timestamps[0]) + 1}")
    write_clip(good, str(tmp_path / "in" / f"{good.name}.npz"))
    out = tmp_path / "o2"
    code = s4d(["tracksto4d", "--checkpoint", tiny_checkpoint, "--output", str(out), *args])
    assert code == 0
    assert [p.stem for p in (out / "npz").glob("*.npz")] == [good.name]
    (failures_file,) = (out / "failures").glob("*.parquet")
    failures = pq.read_table(failures_file).to_pylist()
    assert [(f["clip_id"], f["stage"]) for f in failures] == [(record.name, "tracksto4d")]
    assert "no track seen" in failures[0]["message"]
