"""Soak: many small clips through a local multi-node cluster with faults injected as it runs.

A head (`ray start --head` on 127.0.0.1, with a metrics port and the custom resource
`s4d_head`) and `--workers` worker nodes (`cluster/local_worker.sh`, each with the custom
resource `s4d_model_node`). The model pools and the optimiser run on the workers; decode and
write run on the head (so the failure and completion counters live on the node whose metrics
endpoint is scraped, and a killed worker cannot take counted metrics with it). One job
(`ray job submit`, as the README says) processes `--clips` good clips and the bad clips mixed
in among them; every `--fault-every` written clips the next fault of the cycle is injected:

  * actor kill: SIGKILL of a live model actor's process (found with `ray.util.state.list_actors`
    by class name: TrackingActor, StereoActor, SegmentationActor in turn);
  * node kill: SIGKILL of a worker node's raylet and its child processes (a preempted node),
    then a replacement worker node is started with `cluster/local_worker.sh`;

and the inputs hold `--bad-every`-spaced bad clips: a truncated video, an npz missing
`camera2world` (alternating). At the end it checks and prints:

  * every good clip exactly once: one npz, one Parquet row; no `.tmp` leftovers;
  * the failures table == the injected bad clips (each failed in `decode`);
  * summary.json: clips_done == good, clips_failed == bad;
  * the head's metrics: ray_s4d_clips_completed_total == good, ray_s4d_clips_failed_total ==
    bad (per-series maxima seen while the job ran, summed over series);

and exits 1 if any check fails (2 if the job itself failed).

Measured on the 2-core dev machine with the defaults below (`--working-dir .`): all checks
passed in 156 s with 3 node kills and 4 actor kills. Every worker node has its own Ray temp
dir (cluster/README.md, Node loss: with the head's, a replacement node re-unpacked the
working dir under the other nodes' workers, and one earlier run died of it).

    python -m benchmarks.bench_soak [--clips 50] [--frames 6] [--height 256] [--render 3]
        [--fault-every 6] [--bad-every 10] [--workers 2] [--no-upload] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_full_clip import copy_clip
from s4d_ray.io.clip_io import read_clip, write_clip
from s4d_ray.synthetic.synth import SynthConfig, synth_dataset

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
MODEL_NODE, HEAD = "s4d_model_node", "s4d_head"
ACTOR_CLASSES = ("TrackingActor", "StereoActor", "SegmentationActor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(root: Path, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """Render `args.render` clips, copy them up to `args.clips` good clips (clip_io), and add a
    bad clip after every `args.bad_every` good ones. Returns (good ids, {bad id: stage})."""
    data = root / "data"
    rendered = synth_dataset(
        str(data),
        SynthConfig(clips=args.render, frames=args.frames, height=args.height, tracks=200),
    )
    good = list(rendered)
    for index in range(len(good), args.clips):
        good.append(copy_clip(str(data), rendered[index % len(rendered)], index))
    bad: dict[str, str] = {}
    for k in range(args.clips // args.bad_every):
        record = read_clip(str(data / "npz" / f"{good[k * args.bad_every]}.npz"))
        if k % 2 == 0:  # a truncated video
            video = (data / "raw" / f"{record.video_id}.mp4").read_bytes()
            record.video_id = f"truncvid{k:04d}"
            record.name = f"{record.video_id}_{record.timestamps[0]}"
            (data / "raw" / f"{record.video_id}.mp4").write_bytes(video[: len(video) // 3])
            write_clip(record, str(data / "npz" / f"{record.name}.npz"))
        else:  # an npz missing a field
            arrays = record.to_arrays()
            del arrays["camera2world"]
            record.name = f"nofield{k:04d}_{record.timestamps[0]}"
            arrays["name"] = np.array(record.name)
            np.savez(data / "npz" / f"{record.name}.npz", **arrays)
        bad[record.name] = "decode"
    return sorted(good), bad


class MetricsWatcher(threading.Thread):
    """Scrapes the head's metrics endpoint every second; keeps, per `ray_s4d_*` series (name
    plus labels), the largest value seen (a series disappears when its worker exits)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.series: dict[str, float] = {}
        self.halt = threading.Event()

    def scrape(self) -> None:
        try:
            text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("ray_s4d_clips_"):
                series, value = line.rsplit(" ", 1)
                self.series[series] = max(self.series.get(series, 0.0), float(value))

    def run(self) -> None:
        while not self.halt.is_set():
            self.scrape()
            self.halt.wait(1.0)

    def total(self, name: str) -> float:
        return sum(v for s, v in self.series.items() if s.split("{")[0] == name)


class Cluster:
    """A head and worker nodes on loopback, started with `ray start` and local_worker.sh."""

    def __init__(self, args: argparse.Namespace, temp_dir: str):
        self.port, self.dashboard, self.metrics = free_port(), free_port(), free_port()
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_metrics_report_interval_ms": "1000",
            "RAY_DEDUP_LOGS": "0",  # one `s4d clip ... done` line per clip in the job log
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
        }
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.env["RAY_AUTH_TOKEN"])
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard}"
        self.worker_cpus, self.head_cpus, self.temp_dir = args.worker_cpus, args.head_cpus, temp_dir
        self.workers: list[int] = []

    def start(self, workers: int) -> None:
        """The head, then `workers` worker nodes."""
        command = [
            str(BIN / "ray"), "start", "--head", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard),
            "--metrics-export-port", str(self.metrics), "--num-cpus", str(self.head_cpus),
            "--resources", json.dumps({HEAD: 100}), "--temp-dir", self.temp_dir,
        ]  # fmt: skip
        for flag in ("--node-manager-port", "--object-manager-port",
                     "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                     "--runtime-env-agent-port"):  # fmt: skip
            command += [flag, str(free_port())]
        for attempt in range(3):
            try:
                self._run(command)
                break
            except RuntimeError as error:
                if attempt == 2:
                    raise
                print(f"ray start --head failed (attempt {attempt + 1}): {str(error)[-300:]}")
                self.stop()
        self.workers = [self.add_worker() for _ in range(workers)]

    def _run(self, command: list[str]) -> str:
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(
                f"{command[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        return done.stdout

    def add_worker(self) -> int:
        """A worker node from cluster/local_worker.sh; returns its raylet PID."""
        env = {
            **self.env,
            "HEAD_ADDRESS": f"127.0.0.1:{self.port}",
            "NUM_CPUS": str(self.worker_cpus),
            "RESOURCES": json.dumps({MODEL_NODE: 2}),
            "NODE_TEMP_DIR": tempfile.mkdtemp(prefix="n", dir=self.temp_dir),
        }
        for attempt in range(3):  # a loaded machine can miss Ray's fixed 30 s start window
            done = subprocess.run(
                [str(REPO / "cluster" / "local_worker.sh")], env=env, capture_output=True,
                text=True, timeout=300,
            )  # fmt: skip
            if not done.returncode and done.stdout.strip().isdigit():
                return int(done.stdout)
            print(f"local_worker.sh failed (attempt {attempt + 1}): {done.stderr.strip()[-300:]}")
        raise RuntimeError(f"local_worker.sh failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def stop(self) -> None:
        """End this cluster's processes by PID (never `ray stop`, which ends every Ray cluster
        on the machine): those whose command line names its temp dir or session or whose
        environment holds its auth token, the worker raylets, and all their descendants;
        SIGTERM, then SIGKILL after 15 s."""
        import psutil

        session = os.path.basename(os.path.realpath(os.path.join(self.temp_dir, "session_latest")))
        roots = set(self.workers)
        token = self.env["RAY_AUTH_TOKEN"]  # unique to this cluster, inherited by its processes
        for proc in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if self.temp_dir in line or (session.startswith("session_") and session in line):
                roots.add(proc.pid)
                continue
            with contextlib.suppress(psutil.Error):
                if proc.pid != os.getpid() and proc.environ().get("RAY_AUTH_TOKEN") == token:
                    roots.add(proc.pid)
        procs: dict[int, psutil.Process] = {}
        for pid in roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                procs[pid] = proc
                procs.update({c.pid: c for c in proc.children(recursive=True)})
        procs.pop(os.getpid(), None)
        for proc in procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def kill_node(pid: int) -> None:
    """SIGKILL a node's raylet and its child processes, as a preempted machine loses them."""
    workers = children(pid)
    os.kill(pid, signal.SIGKILL)
    for child in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def kill_actor(cluster: Cluster, class_name: str) -> str:
    """SIGKILL the process of a live actor whose class name contains `class_name`."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=cluster.dashboard_url, filters=[("state", "=", "ALIVE")], limit=1000
    )
    for actor in actors:
        if class_name in (actor.class_name or "") and actor.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(actor.pid, signal.SIGKILL)
                return f"killed actor {actor.class_name} pid {actor.pid}"
    return f"no live {class_name} found"


def count_npz(output: Path) -> int:
    folder = output / "npz"
    return len(list(folder.glob("*.npz"))) if folder.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=50, help="good clips")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--height", type=int, default=256, help="equirect eye height of the videos")
    parser.add_argument("--render", type=int, default=3, help="clips rendered; the rest are copies")
    parser.add_argument("--fault-every", type=int, default=6, help="written clips between faults")
    parser.add_argument("--bad-every", type=int, default=10, help="good clips per bad clip")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--head-cpus", type=int, default=3)
    parser.add_argument("--worker-cpus", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds the job may take")
    parser.add_argument("--keep", default="", help="copy the output folder here at the end")
    parser.add_argument(
        "--no-upload",
        action="store_true",
        help="submit without --working-dir: every node imports this checkout (no upload, "
        "no unpacking on each node)",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="s4dsoak"))
    t0 = time.perf_counter()
    good, bad = make_inputs(root, args)
    print(f"inputs: {len(good)} good clips ({args.render} rendered, {args.frames} frames, "
          f"{args.height}-px eyes), {len(bad)} bad; {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    output = root / "out"
    placement = {"custom_resources": {MODEL_NODE: 0.5}, "num_cpus": 0.25}
    on_head = {"custom_resources": {HEAD: 1}, "num_cpus": 0.5}
    config = root / "placement.json"
    config.write_text(
        json.dumps(
            {
                "stages": {"stereo": placement, "tracking": placement, "segmentation": placement,
                           "optimize": placement, "decode": on_head, "write": on_head},
                "clips_per_shard": 1,
                "optimizer": {"clips_per_batch": 1},
                # a 6-frame clip keeps few tracks under the optimiser's 5-frame dilation
                # (one rendered scene keeps 5-14), and this run is about faults, not yield
                "min_tracks": 1,
            }
        )
    )  # fmt: skip
    faults: list[str] = []
    cluster = Cluster(args, str(root / "ray"))
    try:
        cluster.start(args.workers)
        watcher = MetricsWatcher(cluster.metrics)
        t_job = time.perf_counter()
        print(f"cluster up: head + {len(cluster.workers)} workers (raylet pids {cluster.workers})", flush=True)  # fmt: skip
        upload = ["--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml"]
        entry = "jobs/process_clips.py"
        if args.no_upload:  # the nodes import this checkout (editable install in .venv)
            upload, entry = [], str(REPO / "jobs" / "process_clips.py")
        command = [
            str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, *upload, "--",
            "python", entry, "--npz", str(root / "data" / "npz"),
            "--videos", str(root / "data" / "raw"), "--output", str(output),
            "--config", str(config),
        ]  # fmt: skip
        watcher.start()
        log_path = root / "job.log"
        with open(log_path, "w") as log:
            job = subprocess.Popen(command, cwd=REPO, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            next_fault, cycle = args.fault_every, 0
            deadline = time.time() + args.timeout
            while job.poll() is None and time.time() < deadline:
                written = count_npz(output)
                if written >= next_fault and written < len(good):
                    at = time.perf_counter() - t_job
                    if cycle % 2 == 0:  # the next model actor class in turn, else any live one
                        first = (cycle // 2) % len(ACTOR_CLASSES)
                        for name in ACTOR_CLASSES[first:] + ACTOR_CLASSES[:first]:
                            what = kill_actor(cluster, name)
                            if what.startswith("killed"):
                                break
                    else:
                        victim = max(cluster.workers, key=lambda pid: len(children(pid)))
                        kill_node(victim)
                        cluster.workers.remove(victim)
                        replacement = cluster.add_worker()
                        cluster.workers.append(replacement)
                        what = f"killed worker node (raylet pid {victim}); replacement raylet pid {replacement}"
                    faults.append(f"t={at:.0f}s after {written} clips: {what}")
                    print(faults[-1], flush=True)
                    cycle += 1
                    next_fault = written + args.fault_every
                time.sleep(0.5)
            if job.poll() is None:
                job.kill()
                print(f"job still running after {args.timeout} s: killed the submitter")
            job.wait()
        wall = time.perf_counter() - t_job
        time.sleep(3.0)  # one more metrics report interval
        watcher.scrape()
    finally:
        with contextlib.suppress(NameError):
            watcher.halt.set()
        cluster.stop()
    log_text = log_path.read_text()
    print(
        f"job rc {job.returncode}, {wall:.0f} s; faults injected: {len(faults)} + {len(bad)} bad clips"
    )
    if job.returncode:
        print(log_text[-4000:])

    checks: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append((name, ok, detail))

    npz = sorted(p.stem for p in (output / "npz").glob("*.npz"))
    names: list[str] = []
    for shard in sorted((output / "parquet").glob("*.parquet")):
        names += pq.read_table(shard, columns=["name"]).column("name").to_pylist()
    dupes = {n: c for n, c in Counter(names).items() if c > 1}
    check("one npz per good clip", npz == good, f"{len(npz)} npz for {len(good)} good clips")
    check("one Parquet row per good clip", sorted(names) == good,
          f"{len(names)} rows, {len(set(names))} distinct, duplicates {dupes}")  # fmt: skip
    leftovers = [str(p) for p in output.rglob("*") if p.name.startswith(".tmp")]
    check("no half-written files", not leftovers, str(leftovers[:5]))
    failures_path = output / "failures" / "failures-all.parquet"
    failures = pq.read_table(failures_path).to_pylist() if failures_path.exists() else []
    got = {f["clip_id"]: f["stage"] for f in failures}
    check("failures table == injected bad clips", got == bad,
          f"got {len(got)}: {sorted(set(got) ^ set(bad))[:5]} differ")  # fmt: skip
    summary_path = output / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    check("summary clips_done/failed", summary.get("clips_done") == len(good)
          and summary.get("clips_failed") == len(bad),
          f"done {summary.get('clips_done')} failed {summary.get('clips_failed')}")  # fmt: skip
    completed = watcher.total("ray_s4d_clips_completed_total")
    failed = watcher.total("ray_s4d_clips_failed_total")
    check("metrics: clips_completed == good clips", completed == len(good), f"{completed:g}")
    check("metrics: clips_failed == bad clips", failed == len(bad), f"{failed:g}")
    logged = sum(f"s4d clip {c} done" in log_text for c in good)
    check("job log: one 'done' line per good clip", logged == len(good), f"{logged}")

    print(f"{'check':<44}{'ok':>5}  detail")
    for name, ok, detail in checks:
        print(f"{name:<44}{'yes' if ok else 'NO':>5}  {detail}")
    if summary:
        print(f"wall {summary.get('wall_seconds')} s, {summary.get('clips_per_hour')} clips/h; "
              f"stage seconds per clip {summary.get('stage_seconds_per_clip')}")  # fmt: skip
    if args.keep:
        shutil.copytree(output, args.keep, dirs_exist_ok=True)
        shutil.copy(log_path, Path(args.keep) / "job.log")
    ok = not job.returncode and all(ok for _, ok, _ in checks)
    if ok:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root} (inputs, output, job.log, the cluster's session logs under ray/)")
    if job.returncode:
        return 2
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
