"""Autoscaling from zero GPU nodes, rehearsed with Ray's fake multi-node provider.

The node types come from `cluster/gcp_autoscaler.yaml`, so the rehearsal and the real cluster
cannot drift. Kept from the YAML: the worker type names, the GPUs per node of each type, the
custom resources, `min_workers`, a head without GPUs. Overridden to fit a 2-core machine:
CPUs per node (4 logical), `max_workers` (2 GPU nodes, 1 CPU node), the cluster's
`max_workers`, `idle_timeout_minutes` (6 s) and the provider (fake multi-node: each "node" is
a raylet on this machine, started by the autoscaler).

The head is started and stopped here, with its own auth token: `AutoscalingCluster.start()`
and `shutdown()` run `ray stop --force`, which would end every Ray cluster on the machine.
Ray 2.60's default autoscaler (v1) does not publish its node types in the GCS, so the driver
reads them from the autoscaler's config file (`S4D_AUTOSCALER_CONFIG`; on a `ray up` head,
`~/ray_bootstrap_config.yaml`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from s4d_ray.engine.config import config_from_dict
from s4d_ray.engine.preflight import (
    AUTOSCALER_CONFIG_ENV,
    BOOTSTRAP_CONFIG,
    ClusterResourcesError,
)
from s4d_ray.engine.stage_list import default_resources
from tests.conftest import free_port, ray_client_token, stop_ray_cluster
from tests.test_gpu_rehearsal import MODEL_STAGES, two_clips

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's type
CPUS_PER_NODE = 4
IDLE_TIMEOUT_MINUTES = 0.1
pytestmark = pytest.mark.slow


def fake_cluster_config(gcp_yaml: Path, gcs_address: str) -> dict:
    """The GCP autoscaler config's node types on the fake multi-node provider (see the module
    docstring for what is kept and what is overridden)."""
    gcp = yaml.safe_load(gcp_yaml.read_text())
    types = {}
    for name, spec in gcp["available_node_types"].items():
        resources = {**spec["resources"], "CPU": CPUS_PER_NODE}
        if name == gcp["head_node_type"]:
            assert not resources.get("GPU"), "the head must hold no GPU"
            types[FAKE_HEAD_TYPE] = {"resources": resources, "node_config": {}, "max_workers": 0}
            continue
        types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": spec["min_workers"],
            "max_workers": 2 if resources.get("GPU") else 1,
        }
    return {
        "cluster_name": "s4d-fake",
        "max_workers": 3,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@pytest.fixture(scope="module")
def autoscaling_cluster():
    """A head with the fake provider's autoscaler, no worker node yet; stopped by its token."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="s4dscale")
    config = fake_cluster_config(REPO / "cluster" / "gcp_autoscaler.yaml", f"127.0.0.1:{port}")
    assert config["available_node_types"], "no node types derived"
    config_path = Path(temp_dir) / "autoscaler.yaml"
    config_path.write_text(yaml.safe_dump(config))
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    }
    with ray_client_token(token):
        head = config["available_node_types"][FAKE_HEAD_TYPE]["resources"]
        started = subprocess.run(
            [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
             "--port", str(port), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(free_port()), "--metrics-export-port", str(free_port()),
             f"--autoscaling-config={config_path}", "--num-cpus", str(head["CPU"]),
             "--num-gpus", "0", "--temp-dir", temp_dir, "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if started.returncode:
            pytest.fail(f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
        yield {"address": f"127.0.0.1:{port}", "config": config, "config_path": config_path}
        stop_ray_cluster(token)
        shutil.rmtree(temp_dir, ignore_errors=True)


def cpu_models_on_gpu_shares() -> dict:
    """The CPU backend's models (fast here) asking for the neural backend's default GPU
    shares, one actor per pool: the autoscaler sees the GPU cluster's demand. (The neural
    models on fake GPUs are rehearsed in test_gpu_rehearsal.)"""
    neural = default_resources("neural")
    return {
        "clips_per_shard": 1,
        "optimizer": {"clips_per_batch": 1},
        "stages": {
            stage: {"num_gpus": neural[stage].num_gpus, "max_actors": 1} for stage in MODEL_STAGES
        },
        "models": {"allow_cpu_fallback": True},
    }


def _gpu_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))


def test_gpu_workers_are_added_from_zero_and_removed_when_idle(
    autoscaling_cluster, synth_dir, tmp_path, monkeypatch
):
    import ray

    from s4d_ray.engine.pipeline import run_pipeline

    npz = two_clips(synth_dir, tmp_path)
    ray.init(
        address=autoscaling_cluster["address"],
        runtime_env={"working_dir": str(REPO), "excludes": [".venv/", ".git/"]},
    )
    try:
        assert _gpu_nodes() == 0
        # preflight, both sides: without the autoscaler's node types a GPU stage is refused
        # on a cluster with no GPU node; with them, a request one node type holds is
        # accepted, and one no type holds (2 GPUs on 1-GPU nodes, a custom resource no type
        # has) is refused although the autoscaler's totals could hold it
        monkeypatch.delenv(AUTOSCALER_CONFIG_ENV, raising=False)
        if not Path(BOOTSTRAP_CONFIG).expanduser().exists():
            rehearsal = config_from_dict(cpu_models_on_gpu_shares())
            with pytest.raises(ClusterResourcesError, match="no autoscaler node type"):
                run_pipeline(str(npz), str(tmp_path / "refused"), rehearsal, str(synth_dir / "raw"))
        monkeypatch.setenv(AUTOSCALER_CONFIG_ENV, str(autoscaling_cluster["config_path"]))
        for stages, refused in (
            ({"tracking": {"num_gpus": 2}}, r"stages.tracking.num_gpus' = 2"),
            (
                {"stereo": {"custom_resources": {"tpu_slice": 1}}},
                r"stages.stereo.custom_resources.tpu_slice' = 1",
            ),
        ):
            config = config_from_dict({**cpu_models_on_gpu_shares(), "stages": stages})
            with pytest.raises(ClusterResourcesError, match=refused):
                run_pipeline(str(npz), str(tmp_path / "refused"), config, str(synth_dir / "raw"))

        gpu_node_seen: list[float] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set() and not gpu_node_seen:
                if _gpu_nodes():
                    gpu_node_seen.append(time.monotonic())
                done.wait(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        start = time.monotonic()
        watcher.start()
        config = config_from_dict(cpu_models_on_gpu_shares())
        summary = run_pipeline(str(npz), str(tmp_path / "out"), config, str(synth_dir / "raw"))
        finished = time.monotonic()
        done.set()
        watcher.join()
        while _gpu_nodes() and time.monotonic() - finished < 180:
            time.sleep(1)
        scaled_down = time.monotonic()
        remaining_gpu_nodes = _gpu_nodes()
    finally:
        ray.shutdown()
    clips = sorted(p.stem for p in npz.glob("*.npz"))
    assert summary.clips_done == len(clips), summary.failures_by_stage
    names = pq.read_table(tmp_path / "out" / "parquet", columns=["name"]).column("name")
    assert sorted(names.to_pylist()) == clips  # every clip exactly once
    assert gpu_node_seen, "no GPU node was added"
    assert remaining_gpu_nodes == 0, "the GPU nodes were not removed after the idle timeout"
    figures = {
        "seconds_to_first_gpu_node": round(gpu_node_seen[0] - start, 1),
        "job_seconds": round(finished - start, 1),
        "seconds_to_scale_down": round(scaled_down - finished, 1),
        "idle_timeout_s": IDLE_TIMEOUT_MINUTES * 60,
    }
    print("autoscaling:", json.dumps(figures))
    for clip in clips:
        metadata = json.loads(
            pq.read_table(tmp_path / "out" / "parquet", filters=[("name", "=", clip)])
            .column("metadata")[0]
            .as_py()
        )
        for stage in MODEL_STAGES:
            assert metadata["placement"][stage]["ray_gpu_ids"], metadata["placement"]
            assert metadata["placement"][stage]["cpu_fallback"]
