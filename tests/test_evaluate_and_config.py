"""Accuracy evaluation against synthetic ground truth, and the engine's configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from s4d_ray.engine.config import PipelineConfig, config_from_dict, load_config
from s4d_ray.io.clip_io import ClipRecord, read_clip
from s4d_ray.synthetic.evaluate import evaluate_clip
from s4d_ray.synthetic.synth import load_ground_truth


def test_ground_truth_tracks_score_zero_and_errors_are_measured(synth_dir):
    clip_id = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))[0]
    record = read_clip(str(synth_dir / "npz" / f"{clip_id}.npz"))
    truth = load_ground_truth(str(synth_dir), clip_id)
    exact = evaluate_clip(record, truth)
    assert exact["median_error_cm"] < 0.01 and exact["median_relative_depth_error"] < 1e-5
    assert exact["points"] == int(record.track_lengths.sum())

    # push every point 10 % further along its camera ray: a known depth error
    dense = record.dense_tracks()
    centres = record.camera2world[:, :, 3]
    moved = centres[None] + 1.1 * (dense - centres[None])
    sparse = ClipRecord.sparse_from_dense(moved, np.isfinite(dense[..., 0]))
    pushed = ClipRecord(**{**record.__dict__, **sparse})
    scores = evaluate_clip(pushed, truth)
    assert scores["median_relative_depth_error"] == pytest.approx(0.1, abs=0.01)
    distance_cm = 100 * np.linalg.norm(dense - centres[None], axis=-1)
    assert scores["median_error_cm"] == pytest.approx(0.1 * np.nanmedian(distance_cm), rel=0.1)


def test_config_defaults_overrides_and_errors(tmp_path):
    cpu = PipelineConfig()
    assert cpu.resources("tracking").num_gpus == 0 and cpu.resources("decode").num_cpus == 1
    neural = PipelineConfig(backend="neural")
    assert 0 < neural.resources("tracking").num_gpus <= 1
    assert neural.resources("stereo").num_gpus < 1  # fractional where a model does not fill a GPU

    path = tmp_path / "job.yaml"
    path.write_text(
        "backend: neural\nstages:\n  tracking: {num_gpus: 1.0, max_actors: 8}\n"
        "models:\n  precision: bf16\n  tracking: {query_stride: 8}\noptimizer: {clips_per_batch: 2}\n"
    )
    config = load_config(str(path), max_failure_fraction=0.5)
    assert (
        config.resources("tracking").num_gpus == 1.0
        and config.resources("tracking").max_actors == 8
    )
    assert config.resources("stereo").num_gpus == neural.resources("stereo").num_gpus
    assert config.models.precision == "bf16" and config.models.tracking == {"query_stride": 8}
    assert config.optimizer.clips_per_batch == 2 and config.max_failure_fraction == 0.5

    json_path = tmp_path / "job.json"
    json_path.write_text(json.dumps({"clips_per_shard": 3}))
    assert load_config(str(json_path)).clips_per_shard == 3
    with pytest.raises(ValueError, match="clip_per_shard.*unknown key"):
        config_from_dict({"clip_per_shard": 3})
    with pytest.raises(ValueError, match="stages.stero.*unknown stage"):
        config_from_dict({"stages": {"stero": {"num_gpus": 1}}})
    with pytest.raises(ValueError, match="backend"):
        config_from_dict({"backend": "tpu"})
