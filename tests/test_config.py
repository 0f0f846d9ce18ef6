"""Configs are checked on the driver before Ray starts: a ConfigError naming the key path,
exit code 2 from both command lines, and no Ray session."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s4d_ray.engine.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BAD_CONFIGS = [
    ("stages:\n  tracking: {num_gpu: 1}\n", "stages.tracking.num_gpu"),
    ("stages:\n  trackin: {num_gpus: 1}\n", "stages.trackin"),
    ("stages:\n  tracking: [1, 2]\n", "stages.tracking"),
    ("stages:\n  stereo: {num_gpus: '1'}\n", "stages.stereo.num_gpus"),
    ("stages:\n  stereo: {num_gpus: -0.5}\n", "stages.stereo.num_gpus"),
    ("stages:\n  stereo: {min_actors: 0}\n", "stages.stereo.min_actors"),
    ("stages:\n  stereo: {min_actors: 3, max_actors: 2}\n", "stages.stereo.max_actors"),
    ("models: {precision: bf61}\n", "models.precision"),
    ("models: {device: gpu}\n", "models.device"),
    ("models: [fp32]\n", "models"),
    ("models:\n  tracking: {query_strid: 8}\n", "models.tracking.query_strid"),
    ("models:\n  tracking: {query_stride: 0}\n", "models.tracking.query_stride"),
    ("models:\n  tracking: {query_stride: eight}\n", "models.tracking.query_stride"),
    ("models:\n  tracking: {precision: bf16}\n", "models.tracking.precision"),
    (
        "models:\n  tracking: {weights_uri: a.pt}\n",
        "models.tracking.weights_uri",
    ),  # cpu: no weights
    ("models:\n  stereo: {batch_size: 4}\n", "models.stereo.batch_size"),  # not an SGBM option
    ("models:\n  stereo: {block_size: 0}\n", "models.stereo.block_size"),
    ("models:\n  segmentation: 3\n", "models.segmentation"),
    ("backend: neural\nmodels:\n  stereo: {batch_size: 0}\n", "models.stereo.batch_size"),
    (
        "backend: neural\nmodels:\n  segmentation: {input_siz: 65}\n",
        "models.segmentation.input_siz",
    ),
    (
        "backend: neural\nmodels:\n  stereo: {num_disparities: 64}\n",
        "models.stereo.num_disparities",
    ),
    ("optimizer: {clips_per_batch: 0}\n", "optimizer.clips_per_batch"),
    ("optimizer: {num_steps: -1}\n", "optimizer.num_steps"),
    ("optimizer: {step: 3}\n", "optimizer.step"),
    ("optimizer: 4\n", "optimizer"),
    ("clips_per_shard: 0\n", "clips_per_shard"),
    ("min_tracks: x\n", "min_tracks"),
    ("min_tracks: -1\n", "min_tracks"),
    ("max_failure_fraction: 1.5\n", "max_failure_fraction"),
    ("max_failure_fraction: -0.1\n", "max_failure_fraction"),
    ("failure_check_after: 0\n", "failure_check_after"),
    ("backend: tpu\n", "backend"),
    ("clip_per_shard: 3\n", "clip_per_shard"),
]


@pytest.mark.parametrize(("text", "key"), BAD_CONFIGS, ids=[k for _, k in BAD_CONFIGS])
def test_bad_config_names_its_key(tmp_path, text, key):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert raised.value.key == key and repr(key) in str(raised.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "3\n", "just words\n", "a: [1,\n"])
def test_a_config_file_that_is_not_a_mapping_is_an_error(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="job.yaml"):
        load_config(str(path))


def test_good_configs_pass_and_overrides_are_checked(tmp_path):
    neural = config_from_dict(
        {
            "backend": "neural",
            "models": {
                "precision": "bf16",
                "stereo": {"weights_uri": "gs://b/model.safetensors", "batch_size": 4},
                "tracking": {"query_stride": 8, "query_chunk_size": None, "resolution": 64},
                "segmentation": {"input_size": 65},
            },
            "stages": {"tracking": {"num_gpus": 1, "max_actors": 8}},
        }
    )
    assert neural.resources("tracking").num_gpus == 1 and neural.models.precision == "bf16"
    cpu = config_from_dict(
        {"models": {"stereo": {"num_disparities": 64}, "tracking": {"prune_radius": 2}}}
    )
    assert cpu.models.stereo == {"num_disparities": 64}
    assert config_from_dict({"min_tracks": 0, "models": None}).min_tracks == 0
    with pytest.raises(ConfigError, match="max_failure_fraction"):
        load_config(None, max_failure_fraction=2.0)


def test_sea_raft_config_keys_are_checked():
    """`models.stereo.config` holds official SEA-RAFT config keys (checked by the model's own
    reader, which imports torch: only when the key is given)."""
    with pytest.raises(ConfigError) as raised:
        config_from_dict({"backend": "neural", "models": {"stereo": {"config": {"iterz": 2}}}})
    assert raised.value.key == "models.stereo.config" and "iterz" in str(raised.value)
    with pytest.raises(ConfigError, match="models.stereo.config"):
        config_from_dict({"backend": "neural", "models": {"stereo": {"config": [2]}}})


def test_bad_config_in_process_exits_2_without_ray(tmp_path, capsys):
    import ray

    from s4d_ray.cli import run_command
    from s4d_ray.engine.command import COMMANDS, add_arguments

    path = tmp_path / "job.yaml"
    path.write_text("stages:\n  tracking: {num_gpu: 1}\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--npz", str(tmp_path), "--videos", str(tmp_path), "--output", str(tmp_path / "o"),
         "--config", str(path)]
    )  # fmt: skip
    assert run_command(COMMANDS[0], args, "s4d run") == 2
    assert "stages.tracking.num_gpu" in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("command", "text", "key"),
    [
        (["s4d", "run"], "stages:\n  tracking: {num_gpu: 1}\n", "stages.tracking.num_gpu"),
        (["python", "jobs/process_clips.py"], "models: {precision: bf61}\n", "models.precision"),
    ],
)
def test_both_command_lines_exit_2_naming_the_key_before_ray(tmp_path, command, text, key):
    """As users run them: exit 2, the key on stderr, in seconds, and no Ray session started
    (Ray's temp root, pointed into tmp_path, is never created)."""
    path = tmp_path / "job.yaml"
    path.write_text(text)
    ray_tmp = tmp_path / "ray"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0")
    exe = [str(BIN / "s4d"), *command[1:]] if command[0] == "s4d" else [sys.executable, command[1]]
    start = time.perf_counter()
    result = subprocess.run(
        [*exe, "--npz", str(tmp_path), "--videos", str(tmp_path), "--output",
         str(tmp_path / "out"), "--config", str(path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert result.returncode == 2, result.stderr[-2000:]
    assert key in result.stderr and "Traceback" not in result.stderr
    assert not ray_tmp.exists(), "a Ray session was started"
    assert seconds < 30, f"took {seconds:.1f} s"
