"""`s4d run` without --address: a live local cluster is used, a stale record of a dead one is
ignored and a fresh cluster started (Ray's own lookup dies on either with num_cpus given)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from s4d_ray.engine.ray_connect import local_cluster_address
from tests.conftest import free_port


def record_cluster(ray_tmpdir: str, address: str) -> None:
    os.makedirs(os.path.join(ray_tmpdir, "ray"), exist_ok=True)
    with open(os.path.join(ray_tmpdir, "ray", "ray_current_cluster"), "w") as f:
        f.write(address)


def test_only_a_cluster_that_answers_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert local_cluster_address() is None  # no record at all
    record_cluster(str(tmp_path), f"127.0.0.1:{free_port()}")  # left by a killed cluster
    assert local_cluster_address() is None
    with socket.socket() as listener:  # something answers at the recorded GCS port
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        record_cluster(str(tmp_path), address)
        assert local_cluster_address() == address


@pytest.mark.slow
def test_a_stale_cluster_record_starts_a_fresh_local_cluster():
    ray_tmpdir = tempfile.mkdtemp(prefix="s4dr")  # short: Ray's socket paths live under it
    try:
        record_cluster(ray_tmpdir, f"127.0.0.1:{free_port()}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(RAY_TMPDIR=ray_tmpdir, RAY_USAGE_STATS_ENABLED="0")
        script = (
            "import ray\nfrom s4d_ray.engine.ray_connect import connect_ray\n"
            "print(connect_ray())\nprint('cpus', ray.cluster_resources().get('CPU'))\n"
            "ray.shutdown()\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "started a fresh local cluster" in result.stdout
        assert "cpus" in result.stdout and "cpus None" not in result.stdout
    finally:  # the subprocess's ray.shutdown() stopped the cluster it started
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
