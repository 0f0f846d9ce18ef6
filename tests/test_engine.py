"""The engine on a real local Ray cluster (`ray start` on 127.0.0.1), submitted as users do.

One head for the module; jobs go through `ray job submit` with the README's command. Checks
outputs, failure rows, the metrics endpoint while the job runs, resume without duplicates, a
killed job resubmitted, a killed model actor, and a `gs://` run against the GCS emulator.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from s4d_ray.io import fs
from s4d_ray.io.clip_io import read_clip, write_clip
from s4d_ray.viz.report import read_report_data
from tests.conftest import free_port, ray_client_token, stop_ray_cluster
from tests.tiny_models import TINY_SEA_RAFT_KEYS, write_tiny_neural_models

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` on loopback with dashboard and metrics ports; stopped afterwards."""
    ports = {"port": free_port(), "dashboard": free_port(), "metrics": free_port()}
    temp_dir = tempfile.mkdtemp(prefix="s4dray")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_metrics_report_interval_ms": "1000",
        # Ray 2.60 heads require a token; clients send it in token mode. A token of its own
        # (not ~/.ray/auth_token, which a fresh machine lacks) for the head and its clients.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    with ray_client_token(env["RAY_AUTH_TOKEN"]):
        started = subprocess.run(
            [
                str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
                "--port", str(ports["port"]), "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(ports["dashboard"]), "--metrics-export-port", str(ports["metrics"]),
                "--num-cpus", "4", "--temp-dir", temp_dir, "--disable-usage-stats",
            ],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if started.returncode:
            pytest.fail(f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
        yield {
            **ports,
            "address": f"127.0.0.1:{ports['port']}",
            "dashboard_url": f"http://127.0.0.1:{ports['dashboard']}",
            "env": env,
        }
        stop_ray_cluster(env["RAY_AUTH_TOKEN"])
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def engine_inputs(synth_dir, tmp_path_factory):
    """The synthetic clips plus bad ones: a truncated video, an npz missing a field, frames
    past the end of the video, and a file whose name is not a clip id."""
    root = tmp_path_factory.mktemp("engine_inputs")
    shutil.copytree(synth_dir / "npz", root / "npz")
    shutil.copytree(synth_dir / "raw", root / "raw")
    good = sorted(p.stem for p in (root / "npz").glob("*.npz"))
    source = read_clip(str(root / "npz" / f"{good[0]}.npz"))

    corrupt = read_clip(str(root / "npz" / f"{good[0]}.npz"))
    corrupt.video_id, corrupt.name = "corruptvid0", f"corruptvid0_{corrupt.timestamps[0]}"
    write_clip(corrupt, str(root / "npz" / f"{corrupt.name}.npz"))
    video = (root / "raw" / f"{source.video_id}.mp4").read_bytes()
    (root / "raw" / "corruptvid0.mp4").write_bytes(video[: len(video) // 3])

    missing = source.to_arrays()
    del missing["camera2world"]
    missing["name"] = np.array("missingfld0_100000")
    np.savez(root / "npz" / "missingfld0_100000.npz", **missing)

    late = read_clip(str(root / "npz" / f"{good[1]}.npz"))
    late.timestamps = late.timestamps + 60_000_000
    late.name = f"{late.video_id}_{late.timestamps[0]}"
    write_clip(late, str(root / "npz" / f"{late.name}.npz"))

    (root / "npz" / "not a clip id.npz").write_bytes((root / "npz" / f"{good[0]}.npz").read_bytes())
    bad = {
        corrupt.name: "decode",
        "missingfld0_100000": "decode",
        late.name: "decode",
        "not a clip id": "input",
    }
    return root, good, bad


def submit(
    ray_head, *job_args: str, wait: bool = True, submission_id: str = "", timeout: int = 600
) -> subprocess.CompletedProcess:
    """`ray job submit` exactly as the README says, from the repository root."""
    command = [
        str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard_url"],
        "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml",
    ]  # fmt: skip
    if not wait:
        command.append("--no-wait")
    if submission_id:
        command += ["--submission-id", submission_id]
    command += ["--", "python", "jobs/process_clips.py", *job_args]
    deadline = time.time() + 420  # a head that has just started may lack its job agent
    while True:
        result = subprocess.run(
            command, cwd=REPO, env=ray_head["env"], capture_output=True, text=True, timeout=timeout
        )
        not_ready = ("No available agent to submit job", "Failed to connect to Ray at address")
        if not any(text in result.stderr for text in not_ready) or time.time() > deadline:
            return result  # (nothing was submitted when either message is seen)
        time.sleep(3.0)


def parquet_names(output: Path) -> list[str]:
    names = []
    for path in sorted((output / "parquet").glob("*.parquet")):
        names += pq.read_table(path, columns=["name"]).column("name").to_pylist()
    return names


class MetricsWatcher(threading.Thread):
    """Polls the node's metrics endpoint while a job runs; remembers the s4d lines it saw."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.seen: dict[str, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                text = urllib.request.urlopen(self.url, timeout=5).read().decode()
            except OSError:
                text = ""
            for line in text.splitlines():
                if line.startswith("ray_s4d_"):
                    self.seen[line.split("{")[0].split(" ")[0]] = line
            self.stop.wait(1.0)


@pytest.mark.e2e
def test_job_submit_outputs_failures_metrics_and_resume(ray_head, engine_inputs, tmp_path):
    root, good, bad = engine_inputs
    output = tmp_path / "out"
    watcher = MetricsWatcher(ray_head["metrics"])
    watcher.start()
    args = ("--npz", str(root / "npz"), "--videos", str(root / "raw"), "--output", str(output))
    result = submit(ray_head, *args)
    watcher.stop.set()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # every good clip: one npz, one Parquet row; every bad clip: one failure row naming its stage
    assert sorted(p.stem for p in (output / "npz").glob("*.npz")) == good
    assert sorted(parquet_names(output)) == good
    failures = pq.read_table(output / "failures" / "failures-all.parquet").to_pylist()
    assert {f["clip_id"]: f["stage"] for f in failures} == bad
    assert all(f["error_type"] and f["message"] for f in failures)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["clips_done"] == len(good) and summary["clips_failed"] == len(bad)

    # the run report: its figures are the run's numbers (summary.json, shards, failures)
    report = read_report_data((output / "report.html").read_text())
    assert report["summary"] == {k: v for k, v in summary.items() if k != "config"}
    assert report["clips_done_total"] == len(good) and report["clips_failed_total"] == len(bad)
    assert report["failures_by_stage"] == summary["failures_by_stage"]
    assert sorted(c["name"] for c in report["clips"]) == good
    assert all(0 < c["valid_depth_fraction"] <= 1 for c in report["clips"])
    assert set(summary["stage_seconds_per_clip"]) >= {
        "decode",
        "stereo",
        "tracking",
        "lift",
        "optimize",
    }

    # the job log: Ray Data progress and one line per clip
    log = result.stdout + result.stderr
    for clip_id in good:
        assert f"s4d clip {clip_id} done" in log
    assert "Running Dataset" in log or "MapBatches" in log

    # metrics were exported while the job ran
    for name in (
        "ray_s4d_clips_completed_total",
        "ray_s4d_clips_failed_total",
        "ray_s4d_stage_seconds_bucket",
    ):
        assert name in watcher.seen, (
            f"{name} not seen on the metrics endpoint: {sorted(watcher.seen)}"
        )

    # outputs load as release data, and say which backend and model made each stage
    rows = {r["name"]: r for r in pq.read_table(output / "parquet").to_pylist()}
    for clip_id in good:
        record = read_clip(str(output / "npz" / f"{clip_id}.npz"))
        assert record.num_tracks >= 16 and np.isfinite(record.track_coordinates).all()
        models = json.loads(str(record.extras["metadata"]))["models"]
        assert json.loads(rows[clip_id]["metadata"])["models"] == models
        assert {stage: m["backend"] for stage, m in models.items()} == dict.fromkeys(
            ("stereo", "tracking", "segmentation"), "cpu"
        )
        assert models["stereo"]["model"] == "opencv-sgbm-3way"
        assert models["stereo"]["config"]["num_disparities"] == 128
        assert models["tracking"]["model"] == "opencv-lucas-kanade"
        assert models["tracking"]["config"]["query_stride"] == 8
        assert models["segmentation"]["model"] is None
        assert all(m["weights_uri"] is None and m["precision"] == "fp32" for m in models.values())

    # resume: nothing is redone, nothing duplicated
    mtimes = {p: p.stat().st_mtime_ns for p in (output / "npz").glob("*.npz")}
    again = submit(ray_head, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["clips_skipped"] == len(good) and summary["clips_done"] == 0
    assert {p: p.stat().st_mtime_ns for p in (output / "npz").glob("*.npz")} == mtimes
    assert sorted(parquet_names(output)) == good
    failures = pq.read_table(output / "failures" / "failures-all.parquet").to_pylist()
    assert sorted(f["clip_id"] for f in failures) == sorted(bad)
    assert len(list((output / "failures").glob("*.parquet"))) == 1


def test_systemic_failures_abort_the_job(ray_head, engine_inputs, tmp_path):
    """With --max-failure-fraction the job stops early when most clips fail (a systemic
    error), after writing the failures and the summary so far; the exit is an error."""
    root, good, bad = engine_inputs
    npz = tmp_path / "npz"
    npz.mkdir()
    for name in [good[0], *bad]:
        shutil.copy(root / "npz" / f"{name}.npz", npz)
    config = tmp_path / "check_early.json"
    config.write_text(json.dumps({"failure_check_after": 4}))
    output = tmp_path / "out"
    result = submit(
        ray_head, "--npz", str(npz), "--videos", str(root / "raw"), "--output", str(output),
        "--config", str(config), "--max-failure-fraction", "0.25",
    )  # fmt: skip
    assert result.returncode != 0
    assert "aborted:" in result.stdout + result.stderr
    failures = pq.read_table(output / "failures" / "failures-all.parquet").to_pylist()
    assert len(failures) >= 3 and {f["clip_id"] for f in failures} <= set(bad)
    assert json.loads((output / "summary.json").read_text())["clips_failed"] >= 3


def test_killed_job_resubmitted_finishes_without_redoing(ray_head, synth_dir, tmp_path):
    """Two clips finished earlier; a job over all four is stopped while its pipeline runs;
    the resubmitted job completes the rest, rewrites none of the finished, duplicates none."""
    output = tmp_path / "out"
    args = (
        "--npz",
        str(synth_dir / "npz"),
        "--videos",
        str(synth_dir / "raw"),
        "--output",
        str(output),
    )
    first = submit(ray_head, *args, "--limit", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    finished_before = {p.stem: p.stat().st_mtime_ns for p in (output / "npz").glob("*.npz")}
    assert len(finished_before) == 2

    job_id = f"s4d-kill-{os.getpid()}-{time.time_ns()}"
    started = submit(ray_head, *args, wait=False, submission_id=job_id)
    assert started.returncode == 0, started.stderr
    deadline = time.time() + 300
    logs = ""
    while time.time() < deadline and "Running Dataset" not in logs:
        time.sleep(1.0)
        logs = subprocess.run(
            [str(BIN / "ray"), "job", "logs", "--address", ray_head["dashboard_url"], job_id],
            env=ray_head["env"], capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
    subprocess.run(
        [str(BIN / "ray"), "job", "stop", "--address", ray_head["dashboard_url"], job_id],
        env=ray_head["env"], capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert "Running Dataset" in logs, "the job never started its pipeline"
    assert len(list((output / "npz").glob("*.npz"))) < 4, "the job finished before it was stopped"

    result = submit(ray_head, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    all_clips = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))
    assert sorted(p.stem for p in (output / "npz").glob("*.npz")) == all_clips
    assert sorted(parquet_names(output)) == all_clips  # each clip exactly once
    for clip_id, mtime in finished_before.items():
        assert (output / "npz" / f"{clip_id}.npz").stat().st_mtime_ns == mtime
    assert json.loads((output / "summary.json").read_text())["clips_skipped"] >= 2


def test_killed_model_actor_is_survived(ray_head, synth_dir, tmp_path):
    """Kill the tracking actor's process mid-run: Ray restarts it and the clip is retried."""
    import ray
    from ray.util.state import list_actors

    from s4d_ray.engine.config import config_from_dict
    from s4d_ray.engine.pipeline import run_pipeline

    ray.init(
        address=ray_head["address"],
        runtime_env={"working_dir": str(REPO), "excludes": [".venv/", ".git/"]},
    )
    try:
        killed = []

        def kill_tracker() -> None:
            """SIGKILL the tracking actor as soon as it exists, and its restarted incarnation
            once more two seconds later (by then it is usually busy with a clip)."""
            deadline = time.time() + 240
            while time.time() < deadline and len(killed) < 2:
                for actor in list_actors(filters=[("state", "=", "ALIVE")]):
                    if (
                        "TrackingActor" in (actor.class_name or "")
                        and actor.pid
                        and actor.pid not in killed
                    ):
                        os.kill(actor.pid, signal.SIGKILL)
                        killed.append(actor.pid)
                        time.sleep(2.0)
                        break
                else:
                    time.sleep(0.2)

        killer = threading.Thread(target=kill_tracker, daemon=True)
        killer.start()
        output = tmp_path / "out"
        # a dense query grid keeps the tracker busy for seconds per clip: time to find it
        busy = config_from_dict({"models": {"tracking": {"query_stride": 3}}})
        summary = run_pipeline(
            str(synth_dir / "npz"), str(output), busy, videos=str(synth_dir / "raw")
        )
        killer.join(5)
    finally:
        ray.shutdown()
    assert killed, "no tracking actor was found to kill"
    all_clips = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))
    assert summary.clips_done == len(all_clips) and summary.clips_failed == 0
    assert sorted(parquet_names(output)) == all_clips


def test_gcs_buckets_in_and_out(ray_head, synth_dir, gcs_bucket):
    import ray

    from s4d_ray.engine.config import PipelineConfig
    from s4d_ray.engine.pipeline import run_pipeline

    clip_ids = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))[:2]
    for clip_id in clip_ids:
        fs.write_bytes(
            f"{gcs_bucket}/npz/{clip_id}.npz", (synth_dir / "npz" / f"{clip_id}.npz").read_bytes()
        )
        video_id = read_clip(str(synth_dir / "npz" / f"{clip_id}.npz")).video_id
        fs.write_bytes(
            f"{gcs_bucket}/raw/{video_id}.mp4", (synth_dir / "raw" / f"{video_id}.mp4").read_bytes()
        )
    env = {
        "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"],
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    ray.init(
        address=ray_head["address"],
        runtime_env={"working_dir": str(REPO), "excludes": [".venv/", ".git/"], "env_vars": env},
    )
    try:
        summary = run_pipeline(
            f"{gcs_bucket}/npz", f"{gcs_bucket}/out", PipelineConfig(), videos=f"{gcs_bucket}/raw"
        )
    finally:
        ray.shutdown()
    assert summary.clips_done == 2
    written = fs.list_files(f"{gcs_bucket}/out/npz", ".npz")
    assert sorted(u.rsplit("/", 1)[-1][:-4] for u in written) == clip_ids
    assert read_clip(written[0]).num_tracks >= 16
    assert json.loads(fs.read_bytes(f"{gcs_bucket}/out/summary.json"))["clips_done"] == 2
    assert len(fs.list_files(f"{gcs_bucket}/out/parquet", ".parquet")) >= 1


def test_neural_backend_end_to_end_with_tiny_random_models(ray_head, synth_dir, tmp_path):
    """The `neural` wiring on CPU (num_gpus=0): SEA-RAFT (tiny config), BootsTAP (full size,
    run at 64 px), DeepLab (output stride 16 at 65 px), all from checkpoints in their official
    formats with random weights, through the same actors and pipeline as on a GPU cluster."""
    import ray

    from s4d_ray.engine.config import config_from_dict
    from s4d_ray.engine.pipeline import run_pipeline

    models = write_tiny_neural_models(tmp_path)
    no_gpu = {"num_gpus": 0.0, "num_cpus": 0.5, "max_actors": 1}
    config = config_from_dict(
        {
            "backend": "neural",
            "min_tracks": 0,  # random weights track nothing visible; the wiring is under test
            "stages": {s: dict(no_gpu) for s in ("stereo", "tracking", "segmentation")}
            | {s: {"num_cpus": 0.5} for s in ("decode", "lift", "optimize")},
            "models": models,
        }
    )
    clip_id = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))[0]
    npz = tmp_path / "npz"
    npz.mkdir()
    shutil.copy(synth_dir / "npz" / f"{clip_id}.npz", npz)
    ray.init(
        address=ray_head["address"],
        runtime_env={"working_dir": str(REPO), "excludes": [".venv/", ".git/"]},
    )
    try:
        summary = run_pipeline(
            str(npz), str(tmp_path / "out"), config, videos=str(synth_dir / "raw")
        )
    finally:
        ray.shutdown()
    assert summary.clips_done == 1, summary.failures_by_stage
    record = read_clip(str(tmp_path / "out" / "npz" / f"{clip_id}.npz"))
    metadata = json.loads(str(record.extras["metadata"]))
    assert metadata["drift_filter"] == "on"
    # provenance: backend, model, config, weights (URI, sha256) and precision of each stage
    models = metadata["models"]
    checkpoints = {
        "stereo": ("sea-raft", tmp_path / "model.safetensors"),
        "tracking": ("bootstap-tapir", tmp_path / "bootstapir_checkpoint_v2.pt"),
        "segmentation": ("deeplabv3plus_xception65_ade20k", tmp_path / "deeplab.safetensors"),
    }
    for stage, (model, path) in checkpoints.items():
        assert models[stage]["backend"] == "neural" and models[stage]["model"] == model
        assert models[stage]["weights_uri"] == str(path)
        assert models[stage]["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert models[stage]["precision"] == "fp32"
    assert models["stereo"]["config"]["iters"] == TINY_SEA_RAFT_KEYS["iters"]
    assert models["tracking"]["config"]["resolution"] == 64
    assert models["segmentation"]["config"]["output_stride"] == 16
    (row,) = pq.read_table(tmp_path / "out" / "parquet").to_pylist()
    assert json.loads(row["metadata"])["models"] == models
    timings = json.loads(str(record.extras["stage_timings"]))
    assert {"stereo", "tracking", "segmentation", "lift", "optimize"} <= set(timings)


def kill_mid_write(uri: str) -> None:
    """A writer SIGKILLed in the middle of an atomic write (`fs.open_atomic`, as every npz and
    Parquet write of the engine): whatever it leaves behind stays."""
    code = (
        "import time\nfrom s4d_ray.io import fs\n"
        f"with fs.open_atomic({uri!r}) as f:\n"
        "    f.write(b'PAR1' + bytes(4096)); f.flush()\n"
        "    print('writing', flush=True); time.sleep(600)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    assert writer.wait(30) == -signal.SIGKILL


def test_killed_writers_never_block_a_resume_and_one_run_per_output(
    ray_head, engine_inputs, tmp_path
):
    """Writers SIGKILLed mid-write leave their temp files (this version's and
    the old `.tmp-….parquet` / `.tmp-….npz` names, 0 bytes); the resumed job still succeeds,
    removes them and writes each clip once. While it runs, a second run into the same output
    is refused (exit 2, the holder named) instead of writing a second row for a clip. A bad
    shard is named in the error."""
    root, good, _ = engine_inputs
    npz = tmp_path / "npz"
    npz.mkdir()
    shutil.copy(root / "npz" / f"{good[0]}.npz", npz)
    output = tmp_path / "out"
    for sub in ("npz", "parquet", "failures"):
        (output / sub).mkdir(parents=True)
    kill_mid_write(str(output / "parquet" / "shard-0123456789abcdef.parquet"))
    kill_mid_write(str(output / "npz" / f"{good[0]}.npz"))
    legacy = [
        output / "parquet" / ".tmp-k1ll3dshard-0123456789abcdef.parquet",
        output / "npz" / f".tmp-k1ll3d{good[0]}.npz",
        output / "failures" / ".tmp-k1ll3dfailures-all.parquet",
    ]
    for path in legacy:
        path.write_bytes(b"")
    killed = [p.name for p in output.rglob(".tmp-*") if "k1ll3d" not in p.name]
    assert len(killed) == 2 and all(name.endswith(".partial") for name in killed)

    args = ("--npz", str(npz), "--videos", str(root / "raw"), "--output", str(output))
    job_id = f"s4d-lease-{os.getpid()}-{time.time_ns()}"
    started = submit(ray_head, *args, wait=False, submission_id=job_id)
    assert started.returncode == 0, started.stderr
    deadline = time.time() + 120
    while time.time() < deadline and not (output / ".s4d-lease.json").exists():
        time.sleep(0.2)
    assert (output / ".s4d-lease.json").exists(), "the first run never took the lease"
    second = submit(ray_head, *args)
    assert second.returncode != 0
    assert "in use by another run" in second.stdout + second.stderr

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head["dashboard_url"])
    deadline = time.time() + 300
    while time.time() < deadline and not client.get_job_status(job_id).is_terminal():
        time.sleep(1.0)
    status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert parquet_names(output) == [good[0]]  # exactly once
    assert [p.stem for p in (output / "npz").glob("*.npz")] == [good[0]]
    assert read_clip(str(output / "npz" / f"{good[0]}.npz")).num_tracks >= 16
    assert not list(output.rglob(".tmp-*")), "stale temp files were not cleaned up"
    assert not (output / ".s4d-lease.json").exists()

    # a corrupt shard (not a temp file: damage from outside) is named in the error
    from s4d_ray.engine.resume import completed_clip_ids

    (output / "parquet" / "shard-ffffffffffffffff.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"shard-ffffffffffffffff\.parquet"):
        completed_clip_ids(str(output))


def test_gpu_stage_on_a_gpu_less_cluster_fails_at_once(ray_head, synth_dir, tmp_path):
    """`num_gpus: 1` on a cluster without GPUs used to wait forever for an actor; the driver
    now fails right after connecting, naming the key, before any dataset is built."""
    import ray

    from s4d_ray.engine.config import config_from_dict
    from s4d_ray.engine.pipeline import run_pipeline
    from s4d_ray.engine.preflight import ClusterResourcesError

    config = config_from_dict({"stages": {"tracking": {"num_gpus": 1}}})
    ray.init(address=ray_head["address"])
    try:
        start = time.time()
        with pytest.raises(ClusterResourcesError, match=r"stages.tracking.num_gpus' = 1.*0 GPU"):
            run_pipeline(
                str(synth_dir / "npz"), str(tmp_path / "out"), config, videos=str(synth_dir / "raw")
            )
        assert time.time() - start < 30
    finally:
        ray.shutdown()
    assert not list((tmp_path / "out" / "npz").iterdir())  # nothing was computed
    assert not (tmp_path / "out" / ".s4d-lease.json").exists()  # the lease was released


def test_pools_that_leave_no_cpu_for_decode_fail_at_once(ray_head, synth_dir, tmp_path):
    """Each stage fits a node of the 4-CPU head, but three 1-CPU model pools, the optimiser's
    pool and a 2-CPU decode task do not fit at once: Ray Data would start the pools and wait
    forever for decode (a full-size neural run on CPU hung so). The driver fails at once,
    naming the stages and the totals."""
    import ray

    from s4d_ray.engine.config import config_from_dict
    from s4d_ray.engine.pipeline import run_pipeline
    from s4d_ray.engine.preflight import ClusterResourcesError

    one_cpu = {"num_cpus": 1, "max_actors": 1}
    config = config_from_dict(
        {
            "stages": {
                "stereo": one_cpu,
                "segmentation": one_cpu,
                "tracking": one_cpu,
                "decode": {"num_cpus": 2},
            }
        }
    )
    ray.init(address=ray_head["address"])
    try:
        with pytest.raises(
            ClusterResourcesError,
            match=r"needs 5\.\d+ CPU at once .*stereo 1, .*one decode task 2\) but the Ray "
            r"cluster has 4 CPU",
        ):
            run_pipeline(
                str(synth_dir / "npz"), str(tmp_path / "out"), config, videos=str(synth_dir / "raw")
            )
    finally:
        ray.shutdown()
    assert not list((tmp_path / "out" / "npz").iterdir())
