"""The Ray Train scaffolding both trainers share (`dynadust3r.train`, `tracksto4d.train`).

- Checkpoint bookkeeping: CKPT/latest.json (step, file names, `saved_steps`, metrics
  history), written after the step's files so it only names whole files; rotation of all but
  the newest `keep` checkpoints; resume from latest.json or a fresh start.
- The worker loop: resume, stream batches from the 'train' shard, step, report windowed means
  (+ `step`, `start_step`, `samples_per_s`), rank 0 checkpoints every N steps and at the end.
- Data parallelism: DDP over the workers (`distribute`), and the per-sample loss reductions
  (`sample_sums`, `sample_mean`) that make W workers × batch b step like one worker × W·b.
- The TorchTrainer set-up (ray.init choice, ScalingConfig/RunConfig/FailureConfig).
- The settings and command-line flags every training job has.

Model construction, loss, batch handling and the checkpoint files stay in each package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar

from s4d_ray.argtypes import float_range, int_range
from s4d_ray.errors import InputError
from s4d_ray.io import fs
from s4d_ray.models.device import PRECISIONS, autocast_dtype, check_precision

if TYPE_CHECKING:  # torch is imported where it runs: the sample readers need none of it
    import torch

LATEST = "latest.json"
HISTORY_LENGTH = 1000  # metric rows kept in latest.json

Restored: TypeAlias = "tuple[torch.nn.Module, torch.optim.Optimizer, int, list[dict[str, Any]]]"
"""(model, optimizer, step, history) a worker starts from."""

ModelT = TypeVar("ModelT", bound="torch.nn.Module")


def step_file(kind: str, step: int, suffix: str) -> str:
    """The file name of one checkpoint part: `model_step00000010.pth`."""
    return f"{kind}_step{step:08d}{suffix}"


def read_latest(checkpoint_dir: str) -> dict[str, Any] | None:
    """CKPT/latest.json as a dict, or None when the folder has no checkpoint yet."""
    uri = fs.join(checkpoint_dir, LATEST)
    return json.loads(fs.read_bytes(uri)) if fs.exists(uri) else None


def commit_checkpoint(
    checkpoint_dir: str,
    step: int,
    history: list[dict[str, Any]],
    write_files: Callable[[], dict[str, str]],
    files_of: Callable[[int], Iterable[str]],
    keep: int = 2,
) -> None:
    """`write_files()` writes the step's files and names them ({"model": name, ...}); then
    latest.json (last, so it only names whole files); then the files (`files_of(step)`) of all
    but the newest `keep` checkpoints are deleted."""
    previous = read_latest(checkpoint_dir)
    saved = [s for s in (previous or {}).get("saved_steps", []) if s != step] + [step]
    names = write_files()
    latest = {
        "step": step,
        **names,
        "saved_steps": saved[-keep:],
        "history": history[-HISTORY_LENGTH:],
    }
    fs.write_bytes(fs.join(checkpoint_dir, LATEST), json.dumps(latest, indent=1).encode())
    filesystem, _ = fs.filesystem(checkpoint_dir)
    for old in saved[:-keep]:
        for name in files_of(old):
            uri = fs.join(checkpoint_dir, name)
            if fs.exists(uri):
                filesystem.rm(fs.filesystem(uri)[1])


def restore_or_start(
    checkpoint_dir: str,
    start: Callable[[], tuple[ModelT, torch.optim.Optimizer]],
    resume: Callable[[dict[str, Any]], tuple[ModelT, torch.optim.Optimizer]],
) -> tuple[ModelT, torch.optim.Optimizer, int, list[dict[str, Any]]]:
    """(model, optimizer, step, history): `resume(latest)` when CKPT/latest.json exists, else
    `start()` at step 0 with no history."""
    latest = read_latest(checkpoint_dir)
    if latest is None:
        model, optimizer = start()
        return model, optimizer, 0, []
    model, optimizer = resume(latest)
    return model, optimizer, int(latest["step"]), list(latest["history"])


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward pass's autocast: `precision` (fp32 | bf16 | fp16) on GPU, fp32 on CPU."""
    import torch

    dtype = autocast_dtype(check_precision(precision)) if device.type == "cuda" else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, parts: dict[str, float]
) -> dict[str, float]:
    """Backward and one optimiser step on a finite scalar `loss` (FloatingPointError naming
    the parts otherwise); returns {"loss", "loss_<part>"...} for the report."""
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss {value} ({parts})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": value, **{f"loss_{k}": v for k, v in parts.items()}}


def sample_sums(selected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample sums [B] of `selected` = `values[mask]` (mask [B, ...] bool; the elements in
    the row-major order boolean indexing gives). Scattered back to a zero-filled [B, ...], not
    summed with atomics: deterministic on GPU too."""
    dense = selected.new_zeros(mask.shape).masked_scatter(mask, selected)
    return dense.flatten(1).sum(1)


def sample_mean(selected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The batch mean of each sample's mean over its masked elements (`selected` =
    `values[mask]`; a sample with none adds 0).

    DDP averages gradients over workers, so a loss that is a batch mean of per-sample terms
    steps W workers × batch b exactly like one worker × W·b. A mean pooled over the masked
    elements of the whole batch would not: each worker would divide by its own count."""
    counts = mask.flatten(1).sum(1).clamp(min=1)
    return (sample_sums(selected, mask) / counts).mean()


def distribute(model: torch.nn.Module) -> torch.nn.Module:
    """The model for this worker: DDP (gradients averaged over the workers) when there are
    several, else the model itself (Ray's `prepare_model`).

    `find_unused_parameters`: some parameters get no gradient in a step, which plain DDP
    refuses at the next one. DUSt3R never uses its `mask_token` nor its DPT heads'
    `refinenet4.resConfUnit1` (DUSt3R's own training sets the flag too); TracksTo4D's warm-up
    loss never reaches its per-point head `fc1`."""
    import ray.train.torch

    return ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": True}
    )


def window_summary(
    window: list[dict[str, float]], step: int, start_step: int, batch_size: int, elapsed: float
) -> dict[str, float]:
    """Means over a report window of per-step metrics (keys every step has), plus `step`,
    `start_step` and `samples_per_s` (per worker)."""
    keys = [k for k in window[0] if all(k in m for m in window)]
    summary = {k: sum(m[k] for m in window) / len(window) for k in keys}
    summary.update(
        step=step,
        start_step=start_step,
        samples_per_s=len(window) * batch_size / max(elapsed, 1e-9),
    )
    return summary


def run_worker(
    config: dict[str, Any],
    restore: Callable[[dict[str, Any], torch.device], Restored],
    train_step: Callable[[torch.nn.Module, torch.optim.Optimizer, Any, int, torch.device], dict],
    save: Callable[[str, Any, torch.optim.Optimizer, int, list[dict[str, Any]], int], None],
) -> None:
    """The Ray Train worker body: `restore(config, device)`, then
    `train_step(ddp_model, optimizer, batch, step, device) -> metrics` on batches of the
    'train' shard until config['steps']; reports every `log_every` steps; rank 0 calls
    `save(checkpoint_dir, model, optimizer, step, history, keep_checkpoints)` every
    `checkpoint_every` steps and at the last one. The shard is re-read from its start when it
    runs out before the last step.

    Ray Train splits 'train' with `streaming_split(num_workers, equal=True)`: in every pass
    the workers get disjoint parts of equal size (up to num_workers − 1 rows dropped), so they
    take the same number of steps per pass and stay in step for DDP's gradient allreduce."""
    import ray.train
    import ray.train.torch
    import torch

    if config["torch_threads"]:
        torch.set_num_threads(config["torch_threads"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    model, optimizer, step, history = restore(config, device)
    start_step = step
    torch.manual_seed(config["seed"] * 1000 + rank + step)
    trained = distribute(model)
    shard = ray.train.get_dataset_shard("train")
    window: list[dict[str, float]] = []
    window_start = time.perf_counter()
    while step < config["steps"]:
        batches = 0
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"], drop_last=True):
            batches += 1
            window.append(train_step(trained, optimizer, batch, step, device))
            step += 1
            last = step == config["steps"]
            if step % config["log_every"] == 0 or last:
                elapsed = time.perf_counter() - window_start
                summary = window_summary(window, step, start_step, config["batch_size"], elapsed)
                history.append(summary)
                ray.train.report(summary)
                window, window_start = [], time.perf_counter()
            if rank == 0 and (step % config["checkpoint_every"] == 0 or last):
                save(
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


def clip_dataset(
    npz_uri: str,
    limit: int | None,
    rows_of: Callable[[dict[str, Any]], list[dict[str, Any]]],
    extra: dict[str, Any] | None = None,
    num_cpus: float = 0.5,
) -> Any:
    """A streamed `ray.data.Dataset`: one read task per clip npz under `npz_uri` (folder or
    glob; `limit` clips at most), whose rows are `rows_of({"npz_uri": uri, **extra})`."""
    import ray.data

    uris = fs.list_files(npz_uri, ".npz")[:limit]
    if not uris:
        raise FileNotFoundError(f"no .npz clips under {npz_uri!r}")
    items = [{"npz_uri": u, **(extra or {})} for u in uris]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.flat_map(rows_of, num_cpus=num_cpus)


@dataclass
class RunSettings:
    """What every training run has: data and checkpoint folders, start point, optimisation,
    checkpoints and Ray Train scaling. Each trainer's TrainSettings adds its own fields."""

    npz: str
    checkpoint_dir: str
    init: str | None = None
    """Checkpoint to start from; None = the trainer's TINY_CONFIG (tests, CPU)."""
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    limit: int | None = None
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

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "steps",
        "checkpoint_every",
        "log_every",
        "keep_checkpoints",
        "batch_size",
    )

    def __post_init__(self) -> None:
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_precision(self.precision)


def fit(
    train_loop_per_worker: Callable[[dict[str, Any]], None],
    worker_keys: Iterable[str],
    dataset: Any,
    settings: RunSettings,
    name: str,
) -> dict[str, Any]:
    """Run a TorchTrainer over `dataset` (the 'train' shard) with the settings' `worker_keys`
    as the loop config; returns CKPT/latest.json at the end. Connects to settings.address /
    RAY_ADDRESS, else starts a local Ray, unless Ray is already initialised."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(settings.address)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={key: getattr(settings, key) for key in worker_keys},
        scaling_config=ScalingConfig(
            num_workers=settings.num_workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            failure_config=FailureConfig(max_failures=settings.max_failures),
        ),
        datasets={"train": dataset},
    )
    trainer.fit()
    latest = read_latest(settings.checkpoint_dir)
    if latest is None:
        raise RuntimeError(f"training finished without a checkpoint in {settings.checkpoint_dir!r}")
    return latest


def init_ray(address: str | None) -> None:
    """Connect to `address` / RAY_ADDRESS, else start a local Ray; no-op when initialised."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:  # more logical CPUs than cores, so data tasks and the worker both get scheduled
        ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)))


def add_run_arguments(parser: argparse.ArgumentParser, init_help: str, batch_help: str) -> None:
    """The flags of RunSettings (`--tiny` = no --init); the job adds its model's flags."""
    parser.add_argument("--npz", required=True, help="folder or glob of release npz (any URI)")
    parser.add_argument("--checkpoint-dir", required=True, help="checkpoints (any fsspec URI)")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--init", help=init_help)
    start.add_argument("--tiny", action="store_true", help="tiny random model (tests, CPU)")
    parser.add_argument("--steps", type=int_range(1), default=1000, help="total optimiser steps")
    parser.add_argument("--batch-size", type=int_range(1), default=4, help=batch_help)
    parser.add_argument("--lr", type=float_range(0, low_open=True), default=1e-4)
    parser.add_argument("--limit", type=int_range(1), default=None, help="use at most N clips")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16", help="GPU autocast")
    parser.add_argument("--checkpoint-every", type=int_range(1), default=500)
    parser.add_argument(
        "--keep-checkpoints",
        "--keep",
        type=int_range(1),
        default=2,
        help="newest N checkpoints kept",
    )
    parser.add_argument("--log-every", type=int_range(1), default=10, help="steps between reports")
    parser.add_argument("--num-workers", type=int_range(1), default=1)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--cpus-per-worker", type=float_range(0, low_open=True), default=1.0)
    parser.add_argument("--torch-threads", type=int_range(0), default=0, help="0 = torch's default")
    parser.add_argument(
        "--max-failures", type=int_range(-1), default=0, help="worker-group restarts (-1: no limit)"
    )
    parser.add_argument("--seed", type=int_range(0), default=0)
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS/local)")


def settings_values(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as TrainSettings keyword arguments (`--tiny` dropped: init is None)."""
    return {k: v for k, v in vars(args).items() if k != "tiny"}


def run_training(
    args: argparse.Namespace,
    settings_type: Callable[..., RunSettings],
    train: Callable[[Any], dict[str, Any]],
) -> int:
    """A training command's run: settings from the parsed flags (a bad value is an
    InputError naming it), train, print the final step, model file and last metrics as JSON."""
    try:
        settings = settings_type(**settings_values(args))
    except ValueError as error:
        raise InputError(str(error)) from None
    latest = train(settings)
    final = latest["history"][-1] if latest["history"] else {}
    print(json.dumps({"step": latest["step"], "model": latest["model"], **final}, indent=2))
    return 0
