"""TracksTo4D training with Ray Train: DDP over workers, samples from release npz clips.

Samples need no video: 2D tracks are the clips' 3D tracks projected into their cameras
(`data.clip_samples`). Losses: the official unsupervised ones, plus (`supervised=True`) metric
3D points, relative poses and the movement flag (`loss.py`). The first `warmup_steps` steps use
the official warm-up loss (cameras to t = (0, 0, −15), R = I).

Every `checkpoint_every` steps rank 0 writes CKPT/model_step<N>.pt in the official format
(`{'epoch', 'model_state_dict', 'optimizer_state_dict', 'loss'}`, loadable by
`load_tracksto4d`, `s4d tracksto4d`, `s4d eval-tracksto4d` and the official scripts) with its
JSON config beside it, then CKPT/latest.json (step, file name, metrics history). A re-run with
the same checkpoint folder (or a worker Ray restarted) resumes from latest.json: model,
optimizer and step count. CPU trains in fp32; GPU under the autocast of `precision`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from s4d_ray.io import fs
from s4d_ray.models.device import autocast_dtype, check_precision
from s4d_ray.models.tracksto4d import (
    TracksTo4D,
    TracksTo4DConfig,
    load_tracksto4d,
    save_tracksto4d,
)
from s4d_ray.tracksto4d.data import SAMPLE_COLUMNS, FilterCounts, SampleConfig, samples_from_uris
from s4d_ray.tracksto4d.loss import LossConfig, tracksto4d_loss

log = logging.getLogger(__name__)

TINY_CONFIG = TracksTo4DConfig(
    network_width1=64,
    positional_dim=4,
    K_basis=4,
    network_depth=2,
    heads=4,
    dim_head=16,
    mlp_dim=128,
    camera_kernel_size=7,
)
"""A ~150k-parameter network for CPU tests and smoke runs."""
LATEST = "latest.json"
HISTORY_LENGTH = 1000


def initial_model(init: str | None, seed: int) -> TracksTo4D:
    """An official-format checkpoint to start from, or TINY_CONFIG seeded."""
    if init:
        return load_tracksto4d(init).train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TracksTo4D(TINY_CONFIG)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam, as the official training."""
    return torch.optim.Adam(model.parameters(), lr=lr)


def to_batch(samples: list[dict[str, np.ndarray]], device: torch.device) -> dict[str, torch.Tensor]:
    """Stack SAMPLE_COLUMNS of samples into tensors on `device`."""
    return {
        k: torch.from_numpy(np.stack([s[k] for s in samples])).to(device) for k in SAMPLE_COLUMNS
    }


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    loss_config: LossConfig,
    device: torch.device,
    warmup: bool = False,
    precision: str = "bf16",
) -> dict[str, float]:
    """One optimiser step on a batch of SAMPLE_COLUMNS tensors; the loss and its parts."""
    model.train()
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["visible"] = batch["visible"].bool()
    dtype = autocast_dtype(check_precision(precision)) if device.type == "cuda" else None
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = model(batch["tracks"].float())
    out = {k: v.float() for k, v in out.items()}
    loss, parts = tracksto4d_loss(out, batch, loss_config, warmup=warmup)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss {value} ({parts})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": value, **{f"loss_{k}": v for k, v in parts.items()}}


def train_local(
    model: TracksTo4D,
    samples: list[dict[str, np.ndarray]],
    steps: int,
    loss_config: LossConfig,
    batch_size: int = 4,
    lr: float = 1e-4,
    warmup_steps: int = 0,
    seed: int = 0,
) -> list[dict[str, float]]:
    """The same steps without Ray (tests, notebooks): random batches of `samples`, CPU/GPU of
    the model; returns per-step metrics."""
    if not samples:
        raise ValueError("no training samples")
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, lr)
    rng = np.random.default_rng(seed)
    history = []
    for step in range(steps):
        picked = rng.choice(len(samples), size=min(batch_size, len(samples)), replace=False)
        batch = to_batch([samples[i] for i in picked], device)
        history.append(
            train_step(model, optimizer, batch, loss_config, device, warmup=step < warmup_steps)
        )
    return history


def read_latest(checkpoint_dir: str) -> dict[str, Any] | None:
    """CKPT/latest.json as a dict, or None when the folder has no checkpoint yet."""
    uri = fs.join(checkpoint_dir, LATEST)
    return json.loads(fs.read_bytes(uri)) if fs.exists(uri) else None


def _model_name(step: int) -> str:
    return f"model_step{step:08d}.pt"


def save_checkpoint(
    checkpoint_dir: str,
    model: TracksTo4D,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: list[dict[str, Any]],
    keep: int = 2,
) -> None:
    """Official-format .pt (+ JSON config), then latest.json (last, so it only names whole
    files); then all but the newest `keep` checkpoints are deleted."""
    previous = read_latest(checkpoint_dir)
    saved = [s for s in (previous or {}).get("saved_steps", []) if s != step] + [step]
    loss = history[-1]["loss"] if history else float("nan")
    save_tracksto4d(model, fs.join(checkpoint_dir, _model_name(step)), optimizer, step, loss)
    latest = {
        "step": step,
        "model": _model_name(step),
        "saved_steps": saved[-keep:],
        "history": history[-HISTORY_LENGTH:],
    }
    fs.write_bytes(fs.join(checkpoint_dir, LATEST), json.dumps(latest, indent=1).encode())
    filesystem, _ = fs.filesystem(checkpoint_dir)
    for old in saved[:-keep]:
        for name in (_model_name(old), _model_name(old).removesuffix(".pt") + ".json"):
            uri = fs.join(checkpoint_dir, name)
            if fs.exists(uri):
                filesystem.rm(fs.filesystem(uri)[1])


def restore(
    config: dict[str, Any], device: torch.device
) -> tuple[TracksTo4D, torch.optim.Optimizer, int, list[dict[str, Any]]]:
    """(model, optimizer, step, history) from CKPT/latest.json, else from init / TINY_CONFIG."""
    latest = read_latest(config["checkpoint_dir"])
    if latest is None:
        model = initial_model(config["init"], config["seed"]).to(device)
        return model, make_optimizer(model, config["lr"]), 0, []
    uri = fs.join(config["checkpoint_dir"], latest["model"])
    model, checkpoint = load_tracksto4d(uri, with_checkpoint=True)
    model = model.to(device).train()
    optimizer = make_optimizer(model, config["lr"])
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    return model, optimizer, int(latest["step"]), list(latest["history"])


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: resume, stream batches from the 'train' shard, step, report, save."""
    import ray.train
    import ray.train.torch

    if config["torch_threads"]:
        torch.set_num_threads(config["torch_threads"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    model, optimizer, step, history = restore(config, device)
    start_step = step
    torch.manual_seed(config["seed"] * 1000 + rank + step)
    trained = ray.train.torch.prepare_model(model)
    loss_config = LossConfig(supervised=config["supervised"])
    shard = ray.train.get_dataset_shard("train")
    window: list[dict[str, float]] = []
    window_start = time.perf_counter()
    while step < config["steps"]:
        batches = 0
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"], drop_last=True):
            batches += 1
            warmup = step < config["warmup_steps"]
            metrics = train_step(
                trained, optimizer, batch, loss_config, device, warmup, config["precision"]
            )
            window.append(metrics)
            step += 1
            last = step == config["steps"]
            if step % config["log_every"] == 0 or last:
                elapsed = time.perf_counter() - window_start
                keys = set.intersection(*(set(m) for m in window))
                summary = {k: sum(m[k] for m in window) / len(window) for k in sorted(keys)}
                summary.update(
                    step=step,
                    start_step=start_step,
                    samples_per_s=len(window) * config["batch_size"] / max(elapsed, 1e-9),
                )
                history.append(summary)
                ray.train.report(summary)
                window, window_start = [], time.perf_counter()
            if rank == 0 and (step % config["checkpoint_every"] == 0 or last):
                save_checkpoint(
                    config["checkpoint_dir"], model, optimizer, step, history, config["keep"]
                )
            if last:
                break
        if batches == 0:
            raise RuntimeError("the training dataset gave no batch (too few samples?)")


@dataclass
class TrainSettings:
    """One training run: data, start point, losses, optimisation, checkpoints, Ray scaling."""

    npz: str
    checkpoint_dir: str
    init: str | None = None
    """Official-format TracksTo4D .pt to start from; None = TINY_CONFIG (tests, CPU)."""
    supervised: bool = True
    steps: int = 1000
    warmup_steps: int = 0
    batch_size: int = 4
    lr: float = 1e-4
    frames: int = 50
    tracks: int = 256
    min_visible: int = 10
    samples_per_clip: int = 16
    limit: int | None = None
    precision: str = "bf16"
    checkpoint_every: int = 500
    keep: int = 2
    log_every: int = 10
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int = 0
    max_failures: int = 0
    seed: int = 0
    address: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "checkpoint_every", "log_every", "keep", "batch_size", "frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_precision(self.precision)


WORKER_KEYS = (
    "checkpoint_dir",
    "init",
    "supervised",
    "seed",
    "lr",
    "steps",
    "warmup_steps",
    "batch_size",
    "precision",
    "checkpoint_every",
    "keep",
    "log_every",
    "torch_threads",
)


def _clip_rows(row: dict[str, Any], config: SampleConfig) -> list[dict[str, Any]]:
    counts = FilterCounts()
    rows = samples_from_uris([row["npz_uri"]], config, counts)
    log.info("tracksto4d samples %s: %s", row["npz_uri"], counts.as_dict())
    return rows


def read_samples(npz: str, config: SampleConfig, limit: int | None = None, num_cpus: float = 0.5):
    """A `ray.data.Dataset` of samples (SAMPLE_COLUMNS), one read task per clip, streamed."""
    import functools

    import ray.data

    uris = fs.list_files(npz, ".npz")[:limit]
    if not uris:
        raise FileNotFoundError(f"no .npz clips under {npz!r}")
    ds = ray.data.from_items([{"npz_uri": u} for u in uris], override_num_blocks=len(uris))
    return ds.flat_map(functools.partial(_clip_rows, config=config), num_cpus=num_cpus)


def train(settings: TrainSettings) -> dict[str, Any]:
    """Start (or resume) training; returns CKPT/latest.json at the end."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        if settings.address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=settings.address)
        else:  # more logical CPUs than cores, so data tasks and the worker both get scheduled
            ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)))
    sample_config = SampleConfig(
        frames=settings.frames,
        tracks=settings.tracks,
        min_visible=settings.min_visible,
        samples_per_clip=settings.samples_per_clip,
        seed=settings.seed,
    )
    samples = read_samples(settings.npz, sample_config, settings.limit)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={key: getattr(settings, key) for key in WORKER_KEYS},
        scaling_config=ScalingConfig(
            num_workers=settings.num_workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=f"tracksto4d-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            failure_config=FailureConfig(max_failures=settings.max_failures),
        ),
        datasets={"train": samples},
    )
    trainer.fit()
    latest = read_latest(settings.checkpoint_dir)
    if latest is None:
        raise RuntimeError(f"training finished without a checkpoint in {settings.checkpoint_dir!r}")
    return latest
