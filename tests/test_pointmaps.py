"""Dense outputs of the engine (`--dense`) and 4D pointmap windows: encodings, geometry, export
against synthetic ground truth, quality checks, the evaluation protocol, and the Ray export job
(bad inputs, resume, reading back with Ray Data)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from s4d_ray.engine.clip_stages import input_rows
from s4d_ray.engine.config import PipelineConfig, load_config
from s4d_ray.engine.resume import completed_clip_ids
from s4d_ray.engine.rows import batch_to_rows, failed, mark_failed, rows_to_batch
from s4d_ray.engine.runner import apply
from s4d_ray.engine.stage_list import REDUCER, STAGE, STAGES, Job
from s4d_ray.geometry.camera import intrinsics
from s4d_ray.geometry.pose_metrics import ate_se3
from s4d_ray.io.clip_io import read_clip
from s4d_ray.io.dense import (
    DenseOutputError,
    decode_depth,
    decode_frames,
    dense_clip_ids,
    dense_file,
    depth_shape,
    encode_depth,
    encode_frames,
)
from s4d_ray.io.writer import (
    npz_uri,
    read_failures,
    read_parquet_clips,
    write_clip_npz,
    write_parquet_shard,
)
from s4d_ray.pointmaps.evaluate import evaluate_pointmaps
from s4d_ray.pointmaps.export import (
    MIN_VALID_BY_BACKEND,
    ExportConfig,
    clip_windows,
    npy_bytes,
    window_starts,
)
from s4d_ray.pointmaps.geometry import (
    depth_in_cameras,
    depth_to_pointmaps,
    normalise_pointmaps,
    recover_poses,
    relative_poses,
    resize_depth,
    scale_intrinsics,
)
from s4d_ray.pointmaps.reader import (
    decode_sample,
    iter_pointmaps,
    iter_raw_samples,
    sample_pointmaps,
)
from s4d_ray.synthetic.synth import load_ground_truth
from tests.test_engine import ray_head  # noqa: F401  (the engine tests' Ray head fixture)

REPO = Path(__file__).resolve().parents[1]
FP16_REL = 2.0**-11


# --- a small synthetic window (no engine) -------------------------------------------------


def orbit_poses(num_frames: int) -> np.ndarray:
    """camera2world [T,4,4]: a camera sliding right and forward while yawing (first = I)."""
    from s4d_ray.geometry.camera import rotation_matrix

    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    for t in range(num_frames):
        poses[t, :3, :3] = rotation_matrix([0, 1, 0], 0.02 * t)
        poses[t, :3, 3] = [0.05 * t, 0.01 * t, 0.03 * t]
    return poses


def wall_depth(num_frames: int, size: int) -> np.ndarray:
    """Depth [T,S,S] of a bumpy wall 3–6 m away, with an invalid corner."""
    v, u = np.mgrid[0:size, 0:size] / size
    depth = 4.0 + 1.5 * np.sin(3 * u) * np.cos(2 * v) + 0.5 * u
    out = np.repeat(depth[None], num_frames, 0).astype(np.float32)
    out[:, : size // 8, : size // 8] = 0
    return out


def tar_bytes(samples: list[dict]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for sample in samples:
            for name, data in sample.items():
                if name == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def reference_sample(key: str, depth: np.ndarray, k: np.ndarray, poses: np.ndarray) -> dict:
    mask = depth > 0
    return {
        "__key__": key,
        "depth.npy": npy_bytes(depth.astype(np.float16)),
        "mask.npy": npy_bytes(mask),
        "intrinsics.npy": npy_bytes(k.astype(np.float32)),
        "camera2world.npy": npy_bytes(poses.astype(np.float32)),
        "meta.json": json.dumps({"clip_id": key}).encode(),
    }


def test_dense_encodings_round_trip_and_reject_corrupt_files():
    depth = wall_depth(3, 32)
    depth[1, 5, 5] = np.nan
    data = encode_depth(depth)
    assert depth_shape(data) == (3, 32, 32)
    back = decode_depth(data)
    valid = np.isfinite(depth) & (depth > 0)
    assert np.array_equal(back > 0, valid)  # the mask is exactly depth > 0
    assert np.max(np.abs(back[valid] - depth[valid]) / depth[valid]) <= FP16_REL
    y, x = np.mgrid[0:32, 0:48]
    frames = np.stack(
        [np.stack([x * 4 + t, y * 6, (x + y) * 2 + 40], -1) for t in range(4)]
    ).astype(np.uint8)  # smooth colour ramps (what video codecs are for)
    decoded = decode_frames(encode_frames(frames))
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(float) - frames).mean() < 3
    with pytest.raises(DenseOutputError, match="clip 'x_1'.*corrupt depth"):
        decode_depth(data[: len(data) // 2], "clip 'x_1'")


def test_pointmaps_geometry_normalisation_and_pose_recovery():
    size, num_frames = 64, 5
    k = intrinsics(size, size, 60.0)
    poses = orbit_poses(num_frames)
    depth = wall_depth(num_frames, size)
    points = depth_to_pointmaps(depth, k, poses)
    mask = depth > 0
    z = depth_in_cameras(points, poses)
    assert np.allclose(z[mask], depth[mask], rtol=1e-5)
    assert np.all(points[~mask] == 0)
    normalised, scale = normalise_pointmaps(points, mask)
    assert np.isclose(np.linalg.norm(normalised[mask], axis=-1).mean(), 1.0, atol=1e-6)
    assert 3.0 < scale < 7.0
    recovered = recover_poses(points, mask, k)
    assert ate_se3(recovered, poses).rmse < 1e-5
    assert np.abs(recovered - poses).max() < 1e-4
    # same field of view at half size: focal and principal point halve
    half = scale_intrinsics(k, (size, size), (size // 2, size // 2))
    assert np.allclose(half[:2], k[:2] / 2) and np.allclose(half[2], [0, 0, 1])
    small = resize_depth(depth, size // 2)
    assert small.shape == (num_frames, size // 2, size // 2)
    assert set(np.unique(small)) <= set(np.unique(depth))  # measured values only, no blending


def test_window_config_starts_and_one_run_per_export_folder(tmp_path):
    from s4d_ray.io.lease import OutputBusyError, OutputLease
    from s4d_ray.pointmaps.export import export_pointmaps

    export = tmp_path / "export"
    export.mkdir()
    with OutputLease.acquire(str(export)), pytest.raises(OutputBusyError):
        export_pointmaps(str(tmp_path / "engine"), str(export))
    assert window_starts(24, 17, 4) == [0, 4]
    assert window_starts(12, 13, 13) == []
    assert window_starts(17, 17, 17) == [0]
    for bad in ({"frames": 16}, {"size": 511}, {"min_valid": 1.5}, {"stride": -1}):
        with pytest.raises(ValueError, match="--"):
            ExportConfig(**bad)


def test_eval_scores_reference_at_zero_and_a_depth_push_at_ten_percent(tmp_path):
    size, num_frames = 64, 5
    k = intrinsics(size, size, 60.0)
    poses = orbit_poses(num_frames)
    refs = [
        reference_sample(f"clip_{i:06d}", wall_depth(num_frames, size) * (1 + i), k, poses)
        for i in range(2)
    ]
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "a.tar").write_bytes(tar_bytes(refs))
    decoded = [decode_sample(raw) for raw in iter_raw_samples(str(tmp_path / "ref" / "a.tar"))]
    for name, factor in (("self", 1.0), ("push", 1.1)):
        preds = []
        for sample in decoded:
            depth = np.where(sample["mask"], sample["depth"], 0) * factor
            points = depth_to_pointmaps(depth, sample["intrinsics"], sample["camera2world"])
            preds.append({"__key__": sample["key"], "pointmaps.npy": npy_bytes(points)})
        (tmp_path / f"{name}.tar").write_bytes(tar_bytes(preds[::-1]))  # order does not matter
    same = evaluate_pointmaps(str(tmp_path / "self.tar"), str(tmp_path / "ref"))
    assert same["samples"] == 2 and same["missing"] == []
    assert same["mean"]["abs_rel_metric"] == 0.0 and same["mean"]["abs_rel_scaled"] == 0.0
    assert same["mean"]["delta_metric"] == 1.0
    assert same["mean"]["ate_sim3_m"] < 1e-5 and same["mean"]["rpe_translation_m"] < 1e-5
    from s4d_ray.cli import main

    out = tmp_path / "eval.json"
    args = ["eval-pointmaps", "--pred", str(tmp_path / "push.tar"), "--ref", str(tmp_path / "ref")]
    assert main([*args, "--out", str(out)]) == 0
    push = json.loads(out.read_text())
    assert sorted(push["per_sample"]) == ["clip_000000", "clip_000001"]
    assert abs(push["mean"]["abs_rel_metric"] - 0.1) < 1e-5
    assert push["mean"]["abs_rel_scaled"] < 1e-5  # one per-sequence scale removes a uniform push
    assert push["mean"]["delta_metric"] == 1.0  # 1.1 < 1.25
    assert abs(push["mean"]["scale"] - 1 / 1.1) < 1e-5
    assert push["mean"]["ate_se3_m"] < 1e-5  # same rays, same centres: same poses


# --- the engine with --dense on a synthetic clip -----------------------------------------


@pytest.fixture(scope="module")
def dense_run(synth_dir, tmp_path_factory):
    """One synthetic clip through every stage of the engine with `dense: true` (the stage list
    via `runner.apply`, as `run_in_process` does), keeping the stereo stage's float32 depth."""
    output = tmp_path_factory.mktemp("dense_out")
    rows, _ = input_rows(str(synth_dir / "npz"), str(synth_dir / "raw"), limit=1)
    config = load_config(None, dense=True, min_tracks=0)
    job = Job(config, str(output))
    item, batched, engine_depth = rows[0], False, None
    for spec in STAGES:
        if (spec.kind == REDUCER) != batched:
            item = batch_to_rows(item)[0] if batched else rows_to_batch([item])
            batched = not batched
        item = apply(spec, spec.setup(job), item)
        if spec.name == "stereo":
            engine_depth = item["depth"].copy()
    summary = batch_to_rows(item)[0]
    assert summary["status"] == "done", summary["error_message"]
    return output, rows[0]["clip_id"], engine_depth


def test_dense_outputs_are_written_listed_and_part_of_resume(dense_run, synth_dir):
    output, clip_id, engine_depth = dense_run
    (record,) = read_parquet_clips(str(output / "parquet"))
    files = json.loads(str(record.extras["dense_files"]))
    assert sorted(files) == ["camera", "depth", "left", "right"]
    assert all((output / path).is_file() for path in files.values())
    depth = decode_depth((output / files["depth"]).read_bytes())
    valid = engine_depth > 0
    assert np.array_equal(depth > 0, valid)
    assert np.max(np.abs(depth[valid] - engine_depth[valid]) / engine_depth[valid]) <= FP16_REL
    camera = json.loads((output / files["camera"]).read_text())
    assert np.allclose(camera["intrinsics"], intrinsics(512, 512, 60.0))
    assert completed_clip_ids(str(output), load_config(None, dense=True)) == {clip_id}
    # the DynaDUSt3R samples read the dense frames instead of re-rectifying the raw video
    from s4d_ray.dynadust3r.data import read_left_frames

    clip = read_clip(npz_uri(str(output), clip_id), extras=())
    dense = read_left_frames(clip, dense_root=str(output))
    raw = read_left_frames(clip, videos_uri=str(synth_dir / "raw"))
    psnr = 10 * np.log10(255**2 / np.mean((dense.astype(float) - raw) ** 2))
    assert dense.shape == raw.shape and psnr > 35


def test_resume_needs_every_dense_file_and_dense_off_carries_nothing(dense_run, tmp_path):
    output, clip_id, _ = dense_run
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    (copy / "dense" / clip_id / "camera.json").unlink()
    assert dense_clip_ids(str(copy)) == set()
    dense = load_config(None, dense=True)
    assert completed_clip_ids(str(copy), dense) == set()  # redone by a --dense run
    assert completed_clip_ids(str(copy)) == {clip_id}  # complete for a run without it
    # a failed clip gets empty dense columns (one schema for every row, no arrays kept)
    row = mark_failed(
        {"clip_id": clip_id, "error_stage": "", "timings": "{}"}, STAGE["decode"], OSError("x")
    )
    assert failed(row) and row["dense_left"] == b"" and row["dense_right"] == b""
    assert PipelineConfig().dense is False
    from s4d_ray.cli import build_parser

    args = build_parser().parse_args(
        ["run", "--npz", "n", "--videos", "v", "--output", "o", "--dense"]
    )
    assert args.dense and load_config(None, dense=True).dense


def test_exported_windows_match_ground_truth_depth_and_poses(dense_run, synth_dir):
    output, clip_id, engine_depth = dense_run
    gt = load_ground_truth(str(synth_dir), clip_id)
    samples, report = clip_windows(str(output), clip_id, ExportConfig(frames=9, min_valid=0.0))
    assert [s["__key__"] for s in samples] == [f"{clip_id}_000000"]
    assert report["tail_frames_unused"] == 3 and not report["too_short"]
    sample = sample_pointmaps(decode_sample(samples[0]))
    window = slice(0, 9)

    def median_rel(depth: np.ndarray) -> float:
        ok = (depth > 0) & (gt["depth"][window] > 0)
        return float(
            np.median(np.abs(depth[ok] - gt["depth"][window][ok]) / gt["depth"][window][ok])
        )

    engine_error, export_error = median_rel(engine_depth[window]), median_rel(sample["depth"])
    assert abs(export_error - engine_error) < 0.005 * max(engine_error, 1e-3) + 1e-4
    # poses: the synthetic (= release) cameras relative to the window's first one
    truth = relative_poses(
        read_clip(str(synth_dir / "npz" / f"{clip_id}.npz")).camera2world[window]
    )
    assert np.abs(sample["camera2world"] - truth).max() < 1e-5
    meta = json.loads(sample["meta"])
    assert meta["quality"]["pose_ate_m"] < 1e-3
    recovered = recover_poses(sample["pointmaps"], sample["mask"], sample["intrinsics"])
    assert ate_se3(recovered, truth).rmse < 1e-3
    # half size: same field of view, measured depths only
    (half,), _ = clip_windows(str(output), clip_id, ExportConfig(frames=9, size=256, min_valid=0.0))
    half = decode_sample(half)
    assert half["depth"].shape == (9, 256, 256) and half["frames"].shape == (9, 256, 256, 3)
    assert np.allclose(half["intrinsics"][0, 0], intrinsics(512, 512, 60.0)[0, 0] / 2)
    # too short for the window; every window below the valid fraction: counted, not exported
    none, short = clip_windows(str(output), clip_id, ExportConfig(frames=13))
    assert none == [] and short["too_short"]
    none, strict = clip_windows(str(output), clip_id, ExportConfig(frames=5, min_valid=0.99))
    assert none == [] and len(strict["dropped_low_valid"]) == 2
    # the default threshold is the clip's stereo backend's: the CPU path's windows are kept
    kept, by_backend = clip_windows(str(output), clip_id, ExportConfig(frames=9))
    assert by_backend["min_valid"] == MIN_VALID_BY_BACKEND["cpu"]
    assert [s["__key__"] for s in kept] == [f"{clip_id}_000000"], by_backend["dropped_low_valid"]
    neural = {"models": {"stereo": {"backend": "neural"}}}
    assert ExportConfig().min_valid_for(neural) == MIN_VALID_BY_BACKEND["neural"] == 0.7
    assert ExportConfig().min_valid_for({}) == 0.7  # unknown backend: the strict figure
    assert ExportConfig(min_valid=0.2).min_valid_for(neural) == 0.2


# --- the Ray Data export job ---------------------------------------------------------------


def export_cli(head: dict, *args: str) -> dict:
    """`s4d export-pointmaps` against the Ray head, as users run it; returns summary.json."""
    done = subprocess.run(
        [sys.executable, "-m", "s4d_ray.cli", "export-pointmaps", *args, "--address", head["address"]],
        cwd=REPO, env=head["env"], capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = args[args.index("--output") + 1]
    return json.loads((Path(output) / "summary.json").read_text())


@pytest.mark.slow
def test_export_job_bad_inputs_resume_and_readers(ray_head, dense_run, tmp_path):  # noqa: F811
    output, clip_id, _ = dense_run
    engine, export = tmp_path / "engine", tmp_path / "export"
    shutil.copytree(output, engine)
    record = read_clip(npz_uri(str(engine), clip_id))
    copies = []
    for name in ("nodense000_100000", "corruptdepth_100000"):
        record.name = name
        write_clip_npz(record, str(engine))
        copies.append(read_clip(npz_uri(str(engine), name)))
    write_parquet_shard(copies, str(engine))
    shutil.copytree(engine / "dense" / clip_id, engine / "dense" / "corruptdepth_100000")
    Path(dense_file(str(engine), "corruptdepth_100000", "depth.npz")).write_bytes(b"not a zip")
    args = ("--input", str(engine), "--output", str(export), "--frames", "5", "--stride", "4",
            "--min-valid", "0.05")  # fmt: skip

    first = export_cli(ray_head, *args)
    assert first["clips_done"] == 1 and first["clips_failed"] == 2
    assert first["failures_by_stage"] == {"input": 1, "export": 1}
    assert first["windows_exported"] == 2 and first["tail_frames_unused"] == 3
    assert first["quality"]["pose_ate_m"]["max"] < 1e-3
    assert first["bytes_per_window"] > 0 and first["windows_per_second"] > 0
    failures = {f.clip_id: f for f in read_failures(str(export / "failures"))}
    assert failures["nodense000_100000"].stage == "input"
    assert "corrupt depth" in failures["corruptdepth_100000"].message
    keys = [s["key"] for s in iter_pointmaps(str(export))]
    assert sorted(keys) == [f"{clip_id}_000000", f"{clip_id}_000004"]
    shards = sorted(p.name for p in (export / "shards").glob("*.tar"))

    # resume: the exported clip is skipped, the bad ones retried (and fail again); the shard
    # of a run killed before its commit is removed, nothing is written twice
    (export / "shards" / "rkilled000000_000000.tar").write_bytes(b"partial")
    second = export_cli(ray_head, *args)
    assert second["clips_skipped"] == 1 and second["clips_done"] == 0
    assert second["clips_failed"] == 2 and second["windows_exported"] == 0
    assert sorted(p.name for p in (export / "shards").glob("*.tar")) == shards
    assert sorted(s["key"] for s in iter_pointmaps(str(export))) == sorted(keys)

    # Ray Data reader (read_webdataset) on the cluster, normalised (Sora3R profile)
    script = (
        "import json, sys, numpy as np, ray\n"
        "from s4d_ray.pointmaps.reader import read_pointmaps\n"
        f"ray.init(address={ray_head['address']!r})\n"
        f"rows = read_pointmaps({str(export)!r}, normalise=True).take_all()\n"
        "print(json.dumps([[str(r['key']), list(r['pointmaps'].shape), float(r['scale']),\n"
        "    float(np.linalg.norm(r['pointmaps'][r['mask']], axis=-1).mean())] for r in rows]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=ray_head["env"], capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(r[0] for r in rows) == sorted(keys)
    for _, shape, scale, mean_distance in rows:
        assert shape == [5, 512, 512, 3] and scale > 1.0 and abs(mean_distance - 1) < 1e-4

    # torch IterableDataset
    from torch.utils.data import DataLoader

    from s4d_ray.pointmaps.reader import PointmapDataset

    items = list(DataLoader(PointmapDataset(str(export)), batch_size=None))
    assert sorted(i["key"] for i in items) == sorted(keys)
    assert items[0]["pointmaps"].shape == (5, 512, 512, 3) and float(items[0]["scale"]) == 1.0
