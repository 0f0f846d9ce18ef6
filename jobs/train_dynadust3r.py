"""Train DynaDUSt3R on Stereo4D clips with Ray Train (DDP over workers, data streamed by Ray Data).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_dynadust3r.py --npz gs://stereo4d/train --videos gs://my-bucket/raw \
        --init gs://my-bucket/DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth \
        --checkpoint-dir gs://my-bucket/dynadust3r --num-workers 8 --use-gpu

Every `--checkpoint-every` steps rank 0 writes CKPT/model_step<N>.pth (loadable by `load_dust3r`,
`s4d predict`, `s4d eval-dynadust3r`), CKPT/optimizer_step<N>.pt and then CKPT/latest.json
(step, file names, metrics history). A re-run with the same --checkpoint-dir (or a worker
restarted by Ray after a failure) resumes from latest.json: model, optimizer and step count;
the sample stream starts again from its beginning. Without a CUDA device (`--tiny` on CPU) the
same code runs in float32; on GPU under bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Any

if __package__ in (None, ""):  # `python jobs/train_dynadust3r.py` from a Ray working dir
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from s4d_ray import fs  # noqa: E402
from s4d_ray.dynadust3r_data import TARGET_COLUMNS, TRAIN_COLUMNS, SampleConfig  # noqa: E402
from s4d_ray.dynadust3r_eval import images_to_views  # noqa: E402
from s4d_ray.dynadust3r_loss import LossConfig, dynadust3r_loss, moved_point_errors  # noqa: E402
from s4d_ray.models.dynadust3r import (  # noqa: E402
    DynaDUSt3R,
    DynaDUSt3RConfig,
    load_dust3r,
    save_dynadust3r,
)

log = logging.getLogger("train_dynadust3r")

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--npz", required=True, help="folder or glob of release npz (any URI)")
    parser.add_argument("--videos", default="", help="folder of raw VR180 <video_id>.mp4")
    parser.add_argument("--rectified", default="", help="folder of <clip_id>-left_rectified.mp4")
    parser.add_argument("--checkpoint-dir", required=True, help="checkpoints (any fsspec URI)")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--init", help="official DUSt3R .pth (or one of ours) to start from")
    start.add_argument("--tiny", action="store_true", help="tiny random model (tests, CPU)")
    parser.add_argument("--steps", type=int, default=1000, help="total optimiser steps")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per worker per step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, default=512, help="square input size, px")
    parser.add_argument("--pairs-per-clip", type=int, default=16)
    parser.add_argument("--min-tracks", type=int, default=256, help="tracks seen at i, j and k")
    parser.add_argument("--limit", type=int, default=None, help="use at most N clips")
    parser.add_argument("--norm-mode", choices=("metric", "avg_dis"), default="metric")
    parser.add_argument("--alpha", type=float, default=0.2, help="ConfLoss log-confidence weight")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="newest N kept")
    parser.add_argument("--log-every", type=int, default=10, help="steps between reports")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--torch-threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--max-failures", type=int, default=0, help="worker-group restarts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS/local)")


# ---------------------------------------------------------------------------------------------
# Pieces shared by the Ray worker loop and plain-Python callers (tests)
# ---------------------------------------------------------------------------------------------


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
) -> dict[str, float]:
    """One optimiser step on a batch of TRAIN_COLUMNS tensors; loss parts and EPE (m)."""
    model.train()
    view1, view2 = images_to_views(batch["image1"], batch["image2"], device)
    target = {k: batch[k].to(device) for k in TARGET_COLUMNS}
    times = batch["query_time"].float().to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
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


# ---------------------------------------------------------------------------------------------
# Ray Train
# ---------------------------------------------------------------------------------------------


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
            window.append(train_step(trained, optimizer, batch, loss_config, device))
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start (or resume) training from parsed flags; returns CKPT/latest.json at the end."""
    if min(args.steps, args.checkpoint_every, args.log_every, args.keep_checkpoints) < 1:
        raise ValueError(
            "--steps, --checkpoint-every, --log-every, --keep-checkpoints must be >= 1"
        )
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from s4d_ray.dynadust3r_data import read_samples

    if not ray.is_initialized():
        if args.address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=args.address)
        else:  # more logical CPUs than cores, so data tasks and the worker both get scheduled
            ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)))
    sample_config = SampleConfig(
        image_size=args.image_size,
        pairs_per_clip=args.pairs_per_clip,
        min_tracks=args.min_tracks,
        seed=args.seed,
    )
    samples = read_samples(args.npz, args.videos, args.rectified, sample_config, args.limit)
    train_config = {
        key: getattr(args, key)
        for key in (
            "checkpoint_dir",
            "init",
            "seed",
            "lr",
            "weight_decay",
            "steps",
            "batch_size",
            "norm_mode",
            "alpha",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            "torch_threads",
        )
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=train_config,
        scaling_config=ScalingConfig(
            num_workers=args.num_workers,
            use_gpu=args.use_gpu,
            resources_per_worker={"CPU": args.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=f"dynadust3r-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            failure_config=FailureConfig(max_failures=args.max_failures),
        ),
        datasets={"train": samples.select_columns(list(TRAIN_COLUMNS))},
    )
    trainer.fit()
    latest = read_latest(args.checkpoint_dir)
    if latest is None:
        raise RuntimeError(f"training finished without a checkpoint in {args.checkpoint_dir!r}")
    return latest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    latest = run(parser.parse_args(argv))
    final = latest["history"][-1] if latest["history"] else {}
    print(json.dumps({"step": latest["step"], "model": latest["model"], **final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
