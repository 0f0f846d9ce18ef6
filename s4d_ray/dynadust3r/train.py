"""DynaDUSt3R training with Ray Train: DDP over workers, samples streamed by Ray Data.

Every `checkpoint_every` steps rank 0 writes CKPT/model_step<N>.pth (loadable by `load_dust3r`,
`s4d predict`, `s4d eval-dynadust3r`), CKPT/optimizer_step<N>.pt and then CKPT/latest.json
(step, file names, metrics history). A re-run with the same checkpoint folder (or a worker
restarted by Ray after a failure) resumes from latest.json: model, optimizer and step count;
the sample stream starts again from its beginning. On CPU (`tiny`) the same code runs in
float32; on GPU under the autocast of `precision` (bf16 by default).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from s4d_ray.dynadust3r.data import TARGET_COLUMNS, TRAIN_COLUMNS, SampleConfig
from s4d_ray.dynadust3r.inference import images_to_views
from s4d_ray.dynadust3r.loss import LossConfig, dynadust3r_loss, moved_point_errors
from s4d_ray.io import fs
from s4d_ray.models.device import autocast_dtype, check_precision
from s4d_ray.models.dynadust3r import (
    DynaDUSt3R,
    DynaDUSt3RConfig,
    load_dust3r,
    save_dynadust3r,
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
LATEST = "latest.json"
HISTORY_LENGTH = 1000  # metric rows kept in latest.json


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
    dtype = autocast_dtype(precision) if device.type == "cuda" else None
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        res1, res2 = model(view1, view2, times)
    loss, parts = dynadust3r_loss(res1, res2, target, loss_config)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"non-finite loss {loss_value} ({parts})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        errors = moved_point_errors(res1, res2, target)
    epe = float(errors.mean()) if errors.numel() else float("nan")
    return {"loss": loss_value, **{f"loss_{k}": v for k, v in parts.items()}, "epe_m": epe}


def read_latest(checkpoint_dir: str) -> dict[str, Any] | None:
    """CKPT/latest.json as a dict, or None when the folder has no checkpoint yet."""
    uri = fs.join(checkpoint_dir, LATEST)
    if not fs.exists(uri):
        return None
    return json.loads(fs.read_bytes(uri))


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
    previous = read_latest(checkpoint_dir)
    saved = [s for s in (previous or {}).get("saved_steps", []) if s != step] + [step]
    save_dynadust3r(model, fs.join(checkpoint_dir, _model_name(step)), epoch=step)
    with fs.open_atomic(fs.join(checkpoint_dir, _optimizer_name(step)), "wb") as f:
        torch.save(optimizer.state_dict(), f)
    latest = {
        "step": step,
        "model": _model_name(step),
        "optimizer": _optimizer_name(step),
        "saved_steps": saved[-keep:],
        "history": history[-HISTORY_LENGTH:],
    }
    fs.write_bytes(fs.join(checkpoint_dir, LATEST), json.dumps(latest, indent=1).encode())
    filesystem, _ = fs.filesystem(checkpoint_dir)
    for old in saved[:-keep]:
        for name in (_model_name(old), _optimizer_name(old)):
            uri = fs.join(checkpoint_dir, name)
            if fs.exists(uri):
                filesystem.rm(fs.filesystem(uri)[1])


def _model_name(step: int) -> str:
    return f"model_step{step:08d}.pth"


def _optimizer_name(step: int) -> str:
    return f"optimizer_step{step:08d}.pt"


def restore(
    config: dict[str, Any], device: torch.device
) -> tuple[DynaDUSt3R, torch.optim.Optimizer, int, list[dict[str, Any]]]:
    """(model, optimizer, step, history) from CKPT/latest.json, else from --init / --tiny."""
    latest = read_latest(config["checkpoint_dir"])
    if latest is None:
        model = initial_model(config["init"], config["seed"]).to(device)
        return model, make_optimizer(model, config["lr"], config["weight_decay"]), 0, []
    model = load_dust3r(fs.join(config["checkpoint_dir"], latest["model"])).to(device)
    optimizer = make_optimizer(model, config["lr"], config["weight_decay"])
    optim_uri = fs.join(config["checkpoint_dir"], latest["optimizer"])
    filesystem, path = fs.filesystem(optim_uri)
    with filesystem.open(path, "rb") as f:
        optimizer.load_state_dict(torch.load(f, map_location=device, weights_only=True))
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
    loss_config = LossConfig(norm_mode=config["norm_mode"], alpha=config["alpha"])
    shard = ray.train.get_dataset_shard("train")
    window: list[dict[str, float]] = []
    window_start = time.perf_counter()
    while step < config["steps"]:
        batches = 0
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"], drop_last=True):
            batches += 1
            window.append(
                train_step(trained, optimizer, batch, loss_config, device, config["precision"])
            )
            step += 1
            last = step == config["steps"]
            if step % config["log_every"] == 0 or last:
                elapsed = time.perf_counter() - window_start
                metrics = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
                metrics.update(
                    step=step,
                    start_step=start_step,
                    samples_per_s=len(window) * config["batch_size"] / max(elapsed, 1e-9),
                )
                history.append(metrics)
                ray.train.report(metrics)
                window, window_start = [], time.perf_counter()
            if rank == 0 and (step % config["checkpoint_every"] == 0 or last):
                save_checkpoint(
                    config["checkpoint_dir"],
                    model,
                    optimizer,
                    step,
                    history,
                    config["keep_checkpoints"],
                )
            if last:
                break
        if batches == 0:
            raise RuntimeError("the training dataset gave no batch (too few samples?)")


@dataclass
class TrainSettings:
    """One training run: data, start point, optimisation, checkpoints and Ray Train scaling."""

    npz: str
    checkpoint_dir: str
    videos: str = ""
    rectified: str = ""
    init: str | None = None
    """Official DUSt3R .pth (or one of ours) to start from; None = TINY_CONFIG (tests, CPU)."""
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.05
    image_size: int = 512
    pairs_per_clip: int = 16
    min_tracks: int = 256
    limit: int | None = None
    norm_mode: str = "metric"
    alpha: float = 0.2
    precision: str = "bf16"
    """Autocast on GPU (fp32 | bf16 | fp16); CPU always trains in fp32."""
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int = 0
    max_failures: int = 0
    seed: int = 0
    address: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "checkpoint_every", "log_every", "keep_checkpoints", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_precision(self.precision)


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
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from s4d_ray.dynadust3r.data import read_samples

    if not ray.is_initialized():
        if settings.address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=settings.address)
        else:  # more logical CPUs than cores, so data tasks and the worker both get scheduled
            ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)))
    sample_config = SampleConfig(
        image_size=settings.image_size,
        pairs_per_clip=settings.pairs_per_clip,
        min_tracks=settings.min_tracks,
        seed=settings.seed,
    )
    samples = read_samples(
        settings.npz, settings.videos, settings.rectified, sample_config, settings.limit
    )
    values = asdict(settings)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={key: values[key] for key in WORKER_KEYS},
        scaling_config=ScalingConfig(
            num_workers=settings.num_workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=f"dynadust3r-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            failure_config=FailureConfig(max_failures=settings.max_failures),
        ),
        datasets={"train": samples.select_columns(list(TRAIN_COLUMNS))},
    )
    trainer.fit()
    latest = read_latest(settings.checkpoint_dir)
    if latest is None:
        raise RuntimeError(f"training finished without a checkpoint in {settings.checkpoint_dir!r}")
    return latest
