"""Worker nodes lost mid-job (spot preemption) on a real multi-node Ray cluster on loopback.

A head (no model resources) and two worker nodes, each started by `cluster/local_worker.sh`
(`ray start --address ...` on 127.0.0.1 with its own ports and a custom resource
`s4d_model_node`, which the model pools request, so the models run on the workers). While the
job runs, the busier worker's raylet is killed (SIGKILL by PID, with its worker processes), a
replacement joins, and the busier node is killed again: Ray Data restarts the lost actors on
the nodes left, lost blocks are recomputed, and the job completes with every clip exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import free_port, stop_ray_cluster

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
MODEL_NODE = "s4d_model_node"


def _node_ports() -> list[str]:
    flags = (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    return [part for flag in flags for part in (flag, str(free_port()))]


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    started = subprocess.run(
        [str(BIN / "ray"), "start", "--disable-usage-stats", *args],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if started.returncode:
        pytest.fail(f"ray start failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")


@pytest.fixture
def cluster(request):
    """A head with 2 CPUs (or `request.param` CPUs: 0 puts every task on the workers) and two
    worker nodes of 2 CPUs and 2 `s4d_model_node`."""
    head_cpus = str(getattr(request, "param", 2))
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="s4dnodes")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    _ray_start(
        ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--num-cpus", head_cpus, "--temp-dir", temp_dir, *_node_ports()],
        env,
    )  # fmt: skip

    def join() -> int:
        """A worker node by the README's recipe (cluster/local_worker.sh); its raylet's PID."""
        joined = subprocess.run(
            [str(REPO / "cluster" / "local_worker.sh")],
            env={**env, "HEAD_ADDRESS": f"127.0.0.1:{port}", "RESOURCES": json.dumps({MODEL_NODE: 2}),
                 "NODE_TEMP_DIR": tempfile.mkdtemp(prefix="n", dir=temp_dir)},
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if joined.returncode or not joined.stdout.strip().isdigit():
            pytest.fail(
                f"local_worker.sh failed:\n{joined.stdout[-2000:]}\n{joined.stderr[-2000:]}"
            )
        return int(joined.stdout)

    yield {
        "dashboard_url": f"http://127.0.0.1:{dashboard}",
        "env": env,
        "workers": [join(), join()],
        "join": join,
    }
    stop_ray_cluster(env["RAY_AUTH_TOKEN"])
    shutil.rmtree(temp_dir, ignore_errors=True)


def _children(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


def _kill_node(pid: int) -> None:
    """SIGKILL a node's raylet and its worker processes, as a preempted machine loses them."""
    workers = _children(pid)
    os.kill(pid, signal.SIGKILL)
    for child in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)


@pytest.mark.slow
def test_worker_nodes_killed_mid_job_lose_nothing(cluster, synth_dir, tmp_path):
    output = tmp_path / "out"
    config = tmp_path / "placement.json"
    on_model_nodes = {"custom_resources": {MODEL_NODE: 0.5}, "num_cpus": 0.25}
    config.write_text(
        json.dumps(
            {
                "stages": {
                    "stereo": on_model_nodes,
                    "tracking": on_model_nodes,
                    "segmentation": on_model_nodes,
                    "optimize": on_model_nodes,
                },
                "clips_per_shard": 1,
                "optimizer": {"clips_per_batch": 1},
            }
        )
    )
    command = [
        str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard_url"],
        "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
        "python", "jobs/process_clips.py", "--npz", str(synth_dir / "npz"),
        "--videos", str(synth_dir / "raw"), "--output", str(output), "--config", str(config),
    ]  # fmt: skip
    job = subprocess.Popen(
        command, cwd=REPO, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    # once the first clip is written, others are in flight: kill the busier model node; a
    # replacement joins (as an autoscaler would bring one), and after the second clip the
    # busier node is killed again
    workers = list(cluster["workers"])
    deadline = time.time() + 600
    for written in (1, 2):
        while (
            time.time() < deadline
            and job.poll() is None
            and len(list(output.glob("npz/*.npz"))) < written
        ):
            time.sleep(0.5)
        assert job.poll() is None, f"the job ended before node loss {written} could be injected"
        busiest = max(workers, key=lambda pid: len(_children(pid)))
        _kill_node(busiest)
        workers.remove(busiest)
        if written == 1:
            workers.append(cluster["join"]())
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-4000:]
    clips = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))
    assert sorted(p.stem for p in (output / "npz").glob("*.npz")) == clips
    names = []
    for shard in sorted((output / "parquet").glob("*.parquet")):
        names += pq.read_table(shard, columns=["name"]).column("name").to_pylist()
    assert sorted(names) == clips  # exactly once
    summary = json.loads((output / "summary.json").read_text())
    assert summary["clips_failed"] == 0, summary
    assert not [p for p in output.rglob("*") if p.name.startswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("cluster", [0], indirect=True)
def test_a_node_killed_mid_video_loses_only_the_clips_in_flight(cluster, tmp_path):
    """An own video's read task runs on a worker node (the head has no CPU); once it has cut
    its first clips, that node is killed (raylet and workers, SIGKILL) and a replacement
    joins: Ray runs the read task again elsewhere from the stored cut list, clips posed
    before the loss are not posed again, and every clip is written exactly once."""
    from tests.ownvideo_inputs import one_synthetic_video

    videos, video = one_synthetic_video(tmp_path, frames=90, seed=5)
    output = tmp_path / "out"
    cuts = output / "ownvideo" / "cuts" / f"{video.stem}.json"
    posed = output / "ownvideo" / "npz"
    command = [
        str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard_url"],
        "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
        "python", "jobs/process_clips.py", "--videos", str(videos), "--output", str(output),
        "--min-clip-frames", "8", "--max-clip-frames", "12",
    ]  # fmt: skip
    job = subprocess.Popen(
        command, cwd=REPO, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    deadline, node = time.time() + 600, None
    while time.time() < deadline and job.poll() is None and node is None:
        if cuts.exists() and len(json.loads(cuts.read_text())["clips"]) >= 2:
            readers = subprocess.run(
                ["pgrep", "-f", "ReadOwnVideos"], capture_output=True, text=True
            ).stdout.split()
            parents = {int(Path(f"/proc/{pid}/stat").read_text().split()[3]) for pid in readers}
            node = next((pid for pid in cluster["workers"] if pid in parents), None)
        time.sleep(0.05)
    assert node is not None, "the video's read task was not found on a worker node mid-video"
    before_loss = {p.name: p.stat().st_mtime_ns for p in posed.glob("*.npz")}
    _kill_node(node)
    cluster["join"]()
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-4000:]
    outcome = json.loads((output / "ownvideo" / "videos" / f"{video.stem}.json").read_text())
    clips = sorted(Path(uri).stem for uri in outcome["npz_uris"])
    assert len(clips) >= 6 and outcome["failures"] == []
    assert outcome["figures"]["cut_list_reused"] is True  # the rerun started from the cuts
    assert {n: (posed / n).stat().st_mtime_ns for n in before_loss} == before_loss
    names = []
    for shard in sorted((output / "parquet").glob("*.parquet")):
        names += pq.read_table(shard, columns=["name"]).column("name").to_pylist()
    assert sorted(names) == clips  # exactly once
    assert sorted(p.stem for p in (output / "npz").glob("*.npz")) == clips
