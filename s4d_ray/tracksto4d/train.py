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

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from s4d_ray.io import fs
from s4d_ray.models.tracksto4d import (
    TracksTo4D,
    TracksTo4DConfig,
    load_tracksto4d,
    save_tracksto4d,
)
from s4d_ray.tracksto4d.data import SAMPLE_COLUMNS, FilterCounts, SampleConfig, samples_from_uris
from s4d_ray.tracksto4d.loss import LossConfig, tracksto4d_loss
from s4d_ray.train_loop import (
    RunSettings,
    autocast,
    clip_dataset,
    commit_checkpoint,
    fit,
    init_ray,
    optimizer_step,
    restore_or_start,
    run_worker,
    step_file,
)
from s4d_ray.train_loop import (
    read_latest as read_latest,  # re-exported: the jobs and tests read CKPT/latest.json
)

log = logging.getLogger(__name__)

TINY_CONFIG = TracksTo4DConfig(
    network_width1=32,
    positional_dim=4,
    K_basis=4,
    network_depth=1,
    heads=2,
    dim_head=16,
    mlp_dim=64,
    camera_kernel_size=7,
)
"""A ~20k-parameter network for CPU tests and smoke runs."""


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
    with autocast(device, precision):
        out = model(batch["tracks"].float())
    out = {k: v.float() for k, v in out.items()}
    loss, parts = tracksto4d_loss(out, batch, loss_config, warmup=warmup)
    return optimizer_step(optimizer, loss, parts)


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


def _model_name(step: int) -> str:
    return step_file("model", step, ".pt")


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

    def write_files() -> dict[str, str]:
        loss = history[-1]["loss"] if history else float("nan")
        save_tracksto4d(model, fs.join(checkpoint_dir, _model_name(step)), optimizer, step, loss)
        return {"model": _model_name(step)}

    commit_checkpoint(
        checkpoint_dir,
        step,
        history,
        write_files,
        lambda old: (_model_name(old), _model_name(old).removesuffix(".pt") + ".json"),
        keep,
    )


def restore(
    config: dict[str, Any], device: torch.device
) -> tuple[TracksTo4D, torch.optim.Optimizer, int, list[dict[str, Any]]]:
    """(model, optimizer, step, history) from CKPT/latest.json, else from init / TINY_CONFIG."""
    checkpoint_dir = config["checkpoint_dir"]

    def start() -> tuple[TracksTo4D, torch.optim.Optimizer]:
        model = initial_model(config["init"], config["seed"]).to(device)
        return model, make_optimizer(model, config["lr"])

    def resume(latest: dict[str, Any]) -> tuple[TracksTo4D, torch.optim.Optimizer]:
        uri = fs.join(checkpoint_dir, latest["model"])
        model, checkpoint = load_tracksto4d(uri, with_checkpoint=True)
        model = model.to(device).train()
        optimizer = make_optimizer(model, config["lr"])
        optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        return model, optimizer

    return restore_or_start(checkpoint_dir, start, resume)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: resume, stream batches from the 'train' shard, step, report, save."""
    loss_config = LossConfig(supervised=config["supervised"])

    def step_fn(
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: dict[str, torch.Tensor],
        step: int,
        device: torch.device,
    ) -> dict[str, float]:
        warmup = step < config["warmup_steps"]
        return train_step(model, optimizer, batch, loss_config, device, warmup, config["precision"])

    run_worker(config, restore, step_fn, save_checkpoint)


@dataclass
class TrainSettings(RunSettings):
    """One TracksTo4D run: RunSettings (`init`: official-format TracksTo4D .pt) plus losses
    and sample settings."""

    supervised: bool = True
    warmup_steps: int = 0
    frames: int = 50
    tracks: int = 256
    min_visible: int = 10
    samples_per_clip: int = 16

    POSITIVE = (*RunSettings.POSITIVE, "frames")


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
    "keep_checkpoints",
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

    rows_of = functools.partial(_clip_rows, config=config)
    return clip_dataset(npz, limit, rows_of, num_cpus=num_cpus)


def train(settings: TrainSettings) -> dict[str, Any]:
    """Start (or resume) training; returns CKPT/latest.json at the end."""
    init_ray(settings.address)
    sample_config = SampleConfig(
        frames=settings.frames,
        tracks=settings.tracks,
        min_visible=settings.min_visible,
        samples_per_clip=settings.samples_per_clip,
        seed=settings.seed,
    )
    samples = read_samples(settings.npz, sample_config, settings.limit)
    return fit(train_loop_per_worker, WORKER_KEYS, samples, settings, "tracksto4d")
