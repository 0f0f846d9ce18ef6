"""The GPU cluster rehearsed without a GPU: Ray advertises GPUs that are not there.

A head started by `cluster/local_head.sh` with `NUM_GPUS=2` runs the neural backend (tiny
random models in the official formats) with the default GPU shares: every model actor records
where it ran (node, Ray GPU ids and share, CUDA_VISIBLE_DEVICES, device) in each clip's
metadata, CPU stages hold no GPU, and every clip is written once. With no working CUDA behind
those GPU ids, a model actor stops the job at start-up — one message naming the node, the ids
and the torch.cuda state, within a minute — unless `models.allow_cpu_fallback` is set, which
the rehearsal uses and each clip records.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from s4d_ray.engine.config import config_from_dict
from s4d_ray.engine.preflight import fits, node_types_from_config, stage_request
from s4d_ray.engine.stage_list import ACTOR, StageSpec, default_resources
from s4d_ray.io.clip_io import read_clip
from s4d_ray.models.device import GpuUnavailableError, check_assigned_gpus
from tests.conftest import cuda_skip_reason, free_port, ray_client_token, stop_ray_cluster
from tests.tiny_models import write_tiny_neural_models

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL_STAGES = ("stereo", "segmentation", "tracking")
CPU_STAGES = ("decode", "lift", "optimize")
FAKE_GPUS = 2


no_cuda_here = pytest.mark.skipif(
    cuda_skip_reason() is None, reason="tests the no-CUDA path; CUDA works"
)


# --- without Ray ------------------------------------------------------------------------------


def test_a_worker_without_gpu_ids_is_a_cpu_worker_and_imports_no_torch_check():
    record = check_assigned_gpus([], "stage 'lift' on node n", allow_cpu_fallback=False)
    assert record["ray_gpu_ids"] == [] and record["device"] == "cpu"
    assert not record["cpu_fallback"] and "cuda" not in record


@no_cuda_here
def test_gpu_ids_without_cuda_stop_the_job_naming_node_ids_and_cuda_state(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(GpuUnavailableError) as raised:
        check_assigned_gpus([1], "stage 'tracking' on node abc (10.0.0.7)", False)
    message = str(raised.value)
    assert "stage 'tracking' on node abc (10.0.0.7)" in message
    assert "GPU ids ['1']" in message and "CUDA_VISIBLE_DEVICES='1'" in message
    assert "torch.cuda.is_available() is False" in message
    assert "models.allow_cpu_fallback" in message


@no_cuda_here
def test_cpu_fallback_is_allowed_only_when_asked_and_is_recorded():
    record = check_assigned_gpus([0], "stage 'stereo' on node abc", allow_cpu_fallback=True)
    assert record["cpu_fallback"] and record["device"] == "cpu"
    assert record["cuda"]["available"] is False
    assert record["cuda"]["allocation_error"] == "torch.cuda.is_available() is False"


@pytest.mark.gpu
def test_a_working_gpu_is_used_and_named_in_the_record():
    """On a real GPU: device 'cuda', and the device name, compute capability, driver and
    CUDA versions that go into each clip's placement record."""
    record = check_assigned_gpus([0], "stage 'stereo' on node abc", allow_cpu_fallback=False)
    assert record["device"] == "cuda" and not record["cpu_fallback"]
    cuda = record["cuda"]
    assert cuda["allocation_error"] is None and cuda["device_name"] and cuda["cuda"]
    assert cuda["capability"] and cuda["driver"], cuda


def test_a_cuda_out_of_memory_error_is_the_clips_failure_row_and_the_actor_goes_on():
    """An OOM in one clip is that clip's failure row (and the CUDA cache is released); the
    same stage context then serves the next clip."""
    import torch

    from s4d_ray.engine.runner import apply

    def process(row, context):
        if row["clip_id"] == "big":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
        return {**row, "depth": 1}

    spec = StageSpec(
        "stereo", adds={"depth": ("float32", 3)}, kind=ACTOR, pooled=True, process=process
    )
    metadata = json.dumps({})
    failed = apply(spec, None, {"clip_id": "big", "metadata": metadata, "timings": "{}"})
    assert failed["error_type"] == "OutOfMemoryError" and failed["error_stage"] == "stereo"
    done = apply(spec, None, {"clip_id": "small", "metadata": metadata, "timings": "{}"})
    assert done["depth"] == 1 and "error_type" not in done


def test_preflight_fits_a_request_on_one_node_type_of_the_autoscaler_config():
    """The GCP autoscaler YAML's node types against the neural defaults: every stage fits one
    node type; a 2-GPU actor, an actor wanting more CPUs than any node with its GPU, and a
    custom resource no type has do not — though the cluster's totals would hold them."""
    types = node_types_from_config(
        yaml.safe_load((REPO / "cluster/gcp_autoscaler.yaml").read_text())
    )
    assert any(r.get("GPU", 0) >= 1 for r in types.values())
    assert all("GPU" not in types[name] for name in types if "head" in name)
    for name, resources in default_resources("neural").items():
        assert any(fits(stage_request(resources), t) for t in types.values()), name
    gpu_cpus = max(r["CPU"] for r in types.values() if r.get("GPU"))
    for too_big in (
        {"num_gpus": 2.0},
        {"num_gpus": 0.5, "num_cpus": gpu_cpus + 1},
        {"num_cpus": 1.0, "custom_resources": {"tpu_slice": 1.0}},
    ):
        request = stage_request(
            config_from_dict({"stages": {"tracking": too_big}}).resources("tracking")
        )
        assert not any(fits(request, t) for t in types.values()), too_big


# --- a head with two fake GPUs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_head():
    """`NUM_GPUS=2 cluster/local_head.sh` on free loopback ports with its own token."""
    ports = {"port": free_port(), "dashboard": free_port(), "metrics": free_port()}
    temp_dir = tempfile.mkdtemp(prefix="s4dgpu")
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_PORT": str(ports["port"]),
        "DASHBOARD_PORT": str(ports["dashboard"]),
        "METRICS_PORT": str(ports["metrics"]),
        "TEMP_DIR": temp_dir,
        "NUM_CPUS": "8",
        "NUM_GPUS": str(FAKE_GPUS),
    }
    with ray_client_token(token):
        started = subprocess.run(
            [str(REPO / "cluster" / "local_head.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if started.returncode:
            pytest.fail(
                f"local_head.sh failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}"
            )
        yield {"address": f"127.0.0.1:{ports['port']}", "env": env}
        stop_ray_cluster(token)
        shutil.rmtree(temp_dir, ignore_errors=True)


def two_clips(synth_dir: Path, tmp_path: Path) -> Path:
    """A folder with the first two synthetic clips (the rehearsal's cost is per clip)."""
    npz = tmp_path / "npz"
    npz.mkdir()
    for path in sorted((synth_dir / "npz").glob("*.npz"))[:2]:
        shutil.copy(path, npz)
    return npz


def rehearsal_config(models: dict, allow_cpu_fallback: bool) -> dict:
    """The neural defaults (GPU shares included) with pools capped to fit two GPUs on this
    2-core machine: 2 tracking × 0.5 + 2 stereo × 0.25 + 1 segmentation × 0.125 GPU."""
    return {
        "backend": "neural",
        "min_tracks": 0,  # random weights track nothing visible; placement is under test
        "clips_per_shard": 1,
        "optimizer": {"clips_per_batch": 1},
        "stages": {
            "stereo": {"max_actors": 2},
            "tracking": {"max_actors": 2},
            "segmentation": {"max_actors": 1},
            "optimize": {"max_actors": 1, "num_cpus": 1.0},
            "decode": {"num_cpus": 1.0},
        },
        "models": {**models, "allow_cpu_fallback": allow_cpu_fallback},
    }


@pytest.mark.slow
def test_model_actors_are_placed_on_fake_gpus_and_record_it(gpu_head, synth_dir, tmp_path):
    import ray

    from s4d_ray.engine.pipeline import run_pipeline

    config = config_from_dict(rehearsal_config(write_tiny_neural_models(tmp_path), True))
    assert config.resources("tracking").num_gpus == default_resources("neural")["tracking"].num_gpus
    npz = two_clips(synth_dir, tmp_path)
    ray.init(
        address=gpu_head["address"],
        runtime_env={"working_dir": str(REPO), "excludes": [".venv/", ".git/"]},
    )
    try:
        ray_gpu_ids = {str(i) for i in range(int(ray.cluster_resources()["GPU"]))}
        summary = run_pipeline(str(npz), str(tmp_path / "out"), config, str(synth_dir / "raw"))
    finally:
        ray.shutdown()
    clips = sorted(p.stem for p in npz.glob("*.npz"))
    assert summary.clips_done == len(clips), summary.failures_by_stage
    names = pq.read_table(tmp_path / "out" / "parquet", columns=["name"]).column("name")
    assert sorted(names.to_pylist()) == clips  # every clip once

    share_on_gpu: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for clip in clips:
        metadata = json.loads(
            str(read_clip(str(tmp_path / "out/npz" / f"{clip}.npz")).extras["metadata"])
        )
        placement = metadata["placement"]
        for stage in MODEL_STAGES:
            record = placement[stage]
            assert record["ray_gpu_ids"] and set(record["ray_gpu_ids"]) <= ray_gpu_ids, record
            assert record["cuda_visible_devices"] == ",".join(record["ray_gpu_ids"])
            assert record["num_gpus"] == config.resources(stage).num_gpus
            assert record["cpu_fallback"] and record["device"] == "cpu"  # said, not silent
            for gpu in record["ray_gpu_ids"]:
                share_on_gpu[(record["node_id"], gpu)][record["worker"]] = record["num_gpus"]
        for stage in CPU_STAGES:
            assert placement[stage]["ray_gpu_ids"] == [], (stage, placement[stage])
            assert placement[stage]["num_gpus"] == 0
    assert share_on_gpu
    for (node, gpu), shares in share_on_gpu.items():
        assert sum(shares.values()) <= 1.0 + 1e-9, (node, gpu, shares)


@pytest.mark.slow
def test_gpu_ids_without_cuda_fail_the_job_within_a_minute(gpu_head, synth_dir, tmp_path):
    """The submitted job's driver, as `ray job submit` runs it, against the 2-fake-GPU head
    without `allow_cpu_fallback`: exit 3 in under a minute with the one message."""
    if cuda_skip_reason() is None:
        pytest.skip("CUDA works here: the fake GPU ids would be real")
    config = tmp_path / "config.json"
    models = write_tiny_neural_models(tmp_path)
    config.write_text(json.dumps(rehearsal_config(models, allow_cpu_fallback=False)))
    start = time.monotonic()
    driver = subprocess.run(
        [sys.executable, "jobs/process_clips.py", "--npz", str(synth_dir / "npz"),
         "--videos", str(synth_dir / "raw"), "--output", str(tmp_path / "out"),
         "--config", str(config)],
        cwd=REPO, env={**gpu_head["env"], "RAY_ADDRESS": gpu_head["address"]},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert driver.returncode == 3, driver.stderr[-3000:]
    assert seconds < 60, seconds
    (line,) = [x for x in driver.stderr.splitlines() if x.startswith("s4d run: aborted:")]
    assert "on node" in line and "Ray assigned GPU ids ['" in line
    assert "torch.cuda.is_available() is False" in line
    assert "models.allow_cpu_fallback" in line
    assert not list((tmp_path / "out" / "npz").glob("*.npz"))
