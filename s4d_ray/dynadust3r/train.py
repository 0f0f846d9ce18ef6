"""DynaDUSt3R training with Ray Train: DDP over workers, samples streamed by Ray Data.

Every `checkpoint_every` steps rank 0 writes CKPT/model_step<N>.pth (loadable by `load_dust3r`,
`s4d predict`, `s4d eval-dynadust3r`), CKPT/optimizer_step<N>.pt and then CKPT/latest.json
(step, file names, metrics history). A re-run with the same checkpoint folder (or a worker
restarted by Ray after a failure) resumes from latest.json: model, optimizer and step count;
the sample stream starts again from its beginning. On CPU (`tiny`) the same code runs in
float32; on GPU under the autocast of `precision` (bf16 by default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from s4d_ray.dynadust3r.data import TARGET_COLUMNS, TRAIN_COLUMNS, SampleConfig
from s4d_ray.dynadust3r.inference import images_to_views
from s4d_ray.dynadust3r.loss import LossConfig, dynadust3r_loss, moved_point_errors
from s4d_ray.io import fs
from s4d_ray.models.dynadust3r import (
    DynaDUSt3R,
    DynaDUSt3RConfig,
    load_dust3r,
    save_dynadust3r,
)
from s4d_ray.train_loop import (
    RunSettings,
    autocast,
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

# A few-hundred-thousand-parameter model for CPU tests and smoke runs.
TINY_CONFIG = DynaDUSt3RConfig(
    enc_embed_dim=32,
    enc_depth=1,
    enc_num_heads=2,
    dec_embed_dim=32,
    dec_depth=2,
    dec_num_heads=2,
    dpt_layer_dims=(8, 8, 16, 16),
    dpt_feature_dim=8,
    dpt_last_dim=8,
    time_embed_dim=16,
)


def initial_model(init: str | None, seed: int) -> DynaDUSt3R:
    """The model to start from: a DUSt3R/DynaDUSt3R checkpoint, or TINY_CONFIG seeded."""
    if init:
        return load_dust3r(init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DynaDUSt3R(TINY_CONFIG)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norms (1-d parameters), as DUSt3R/timm do."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    loss_config: LossConfig,
    device: torch.device,
    precision: str = "bf16",
) -> dict[str, float]:
    """One optimiser step on a batch of TRAIN_COLUMNS tensors; loss parts and EPE (m)."""
    model.train()
    view1, view2 = images_to_views(batch["image1"], batch["image2"], device)
    target = {k: batch[k].to(device) for k in TARGET_COLUMNS}
    times = batch["query_time"].float().to(device)
    with autocast(device, precision):
        res1, res2 = model(view1, view2, times)
    loss, parts = dynadust3r_loss(res1, res2, target, loss_config)
    metrics = optimizer_step(optimizer, loss, parts)
    with torch.no_grad():
        errors = moved_point_errors(res1, res2, target)
    epe = float(errors.mean()) if errors.numel() else float("nan")
    return {**metrics, "epe_m": epe}


def _model_name(step: int) -> str:
    return step_file("model", step, ".pth")


def _optimizer_name(step: int) -> str:
    return step_file("optimizer", step, ".pt")


def save_checkpoint(
    checkpoint_dir: str,
    model: DynaDUSt3R,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: list[dict[str, Any]],
    keep: int = 2,
) -> None:
    """Model, optimizer state, then latest.json (written last, so it only names whole files);
    then the files of all but the newest `keep` checkpoints are deleted."""

    def write_files() -> dict[str, str]:
        save_dynadust3r(model, fs.join(checkpoint_dir, _model_name(step)), epoch=step)
        with fs.open_atomic(fs.join(checkpoint_dir, _optimizer_name(step)), "wb") as f:
            torch.save(optimizer.state_dict(), f)
        return {"model": _model_name(step), "optimizer": _optimizer_name(step)}

    commit_checkpoint(
        checkpoint_dir,
        step,
        history,
        write_files,
        lambda old: (_model_name(old), _optimizer_name(old)),
        keep,
    )


def restore(
    config: dict[str, Any], device: torch.device
) -> tuple[DynaDUSt3R, torch.optim.Optimizer, int, list[dict[str, Any]]]:
    """(model, optimizer, step, history) from CKPT/latest.json, else from --init / --tiny."""
    checkpoint_dir = config["checkpoint_dir"]

    def start() -> tuple[DynaDUSt3R, torch.optim.Optimizer]:
        model = initial_model(config["init"], config["seed"]).to(device)
        return model, make_optimizer(model, config["lr"], config["weight_decay"])

    def resume(latest: dict[str, Any]) -> tuple[DynaDUSt3R, torch.optim.Optimizer]:
        model = load_dust3r(fs.join(checkpoint_dir, latest["model"])).to(device)
        optimizer = make_optimizer(model, config["lr"], config["weight_decay"])
        filesystem, path = fs.filesystem(fs.join(checkpoint_dir, latest["optimizer"]))
        with filesystem.open(path, "rb") as f:
            optimizer.load_state_dict(torch.load(f, map_location=device, weights_only=True))
        return model, optimizer

    return restore_or_start(checkpoint_dir, start, resume)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: resume, stream batches from the 'train' shard, step, report, save."""
    loss_config = LossConfig(norm_mode=config["norm_mode"], alpha=config["alpha"])

    def step_fn(
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: dict[str, torch.Tensor],
        step: int,
        device: torch.device,
    ) -> dict[str, float]:
        return train_step(model, optimizer, batch, loss_config, device, config["precision"])

    run_worker(config, restore, step_fn, save_checkpoint)


@dataclass
class TrainSettings(RunSettings):
    """One DynaDUSt3R run: RunSettings (`init`: official DUSt3R .pth or one of ours) plus
    videos, sample and loss settings."""

    videos: str = ""
    rectified: str = ""
    weight_decay: float = 0.05
    image_size: int = 512
    pairs_per_clip: int = 16
    min_tracks: int = 256
    norm_mode: str = "metric"
    alpha: float = 0.2


WORKER_KEYS = (
    "checkpoint_dir",
    "init",
    "seed",
    "lr",
    "weight_decay",
    "steps",
    "batch_size",
    "norm_mode",
    "alpha",
    "precision",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "torch_threads",
)


def train(settings: TrainSettings) -> dict[str, Any]:
    """Start (or resume) training; returns CKPT/latest.json at the end."""
    from s4d_ray.dynadust3r.data import read_samples

    init_ray(settings.address)
    sample_config = SampleConfig(
        image_size=settings.image_size,
        pairs_per_clip=settings.pairs_per_clip,
        min_tracks=settings.min_tracks,
        seed=settings.seed,
    )
    samples = read_samples(
        settings.npz, settings.videos, settings.rectified, sample_config, settings.limit
    )
    dataset = samples.select_columns(list(TRAIN_COLUMNS))
    return fit(train_loop_per_worker, WORKER_KEYS, dataset, settings, "dynadust3r")
