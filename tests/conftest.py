"""Shared fixtures: a real GCS emulator on 127.0.0.1 and small synthetic VR180 clips."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def cuda_skip_reason() -> str | None:
    """Why tests marked `gpu` cannot run here, or None when CUDA works."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        "needs CUDA: torch.cuda.is_available() is False "
        f"(torch {torch.__version__}, {build}, "
        f"CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)})"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked `gpu` where CUDA does not work, naming why (`-ra` prints it)."""
    marked = [item for item in items if item.get_closest_marker("gpu")]
    reason = cuda_skip_reason() if marked else None
    if reason:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """Start `gcp-storage-emulator` in memory on loopback; set STORAGE_EMULATOR_HOST for gcsfs."""
    port = free_port()
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    proc = subprocess.Popen(
        [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("gcp-storage-emulator did not start")
    host = f"http://127.0.0.1:{port}"
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    yield host
    proc.terminate()
    proc.wait(10)
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    """A fresh bucket in the emulator; yields `gs://<bucket>`."""
    from s4d_ray.io import fs

    name = "b" + request.node.name.lower().replace("_", "-")[:40].strip("-[]") + str(os.getpid())
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    gcs, _ = fs.filesystem(f"gs://{name}")
    gcs.mkdir(name)
    return f"gs://{name}"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """Four small synthetic VR180 clips (Stereo4D layout + ground truth), made once per run."""
    from s4d_ray.synthetic.synth import SynthConfig, synth_dataset

    out = tmp_path_factory.mktemp("synth")
    synth_dataset(str(out), SynthConfig(clips=4, frames=12, height=512, seed=7, tracks=600))
    return out


def stop_ray_cluster(token: str) -> None:
    """End one local test cluster: every process whose environment holds its auth token (a
    token per cluster, inherited by its raylets, GCS and workers), and their children.
    Never `ray stop`, which ends every Ray cluster on the machine, a developer's included."""
    import signal

    import psutil

    mine = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    targets: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in mine:
            continue
        try:
            if proc.environ().get("RAY_AUTH_TOKEN") == token:
                targets[proc.pid] = proc
                for child in proc.children(recursive=True):
                    targets.setdefault(child.pid, child)
        except psutil.Error:
            continue
    # a test cluster holds nothing worth a long grace: 5 s after SIGTERM, SIGKILL
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
        for proc in targets.values():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        _, alive = psutil.wait_procs(list(targets.values()), timeout=grace)
        if not alive:
            return
        targets = {p.pid: p for p in alive}


@contextlib.contextmanager
def ray_client_token(token: str) -> Iterator[None]:
    """This process's Ray client in token mode with `token` (a test cluster's own) inside the
    block; the previous mode and token afterwards."""
    previous = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    reload_ray_auth_token()
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reload_ray_auth_token()


def reload_ray_auth_token() -> None:
    """Make this process's Ray client read RAY_AUTH_MODE and RAY_AUTH_TOKEN again: Ray caches
    the mode (its config) and the token it saw first, and each test cluster has a token of
    its own."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
