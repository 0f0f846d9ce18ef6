"""Where and in which arithmetic a model runs."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from s4d_ray.errors import InputError, JobAbortedError

PRECISIONS = ("fp32", "bf16", "fp16")
"""Neural backend arithmetic: fp32, or bf16 / fp16 autocast."""


def pick_device(device: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible (e.g. the one Ray gave this actor), else 'cpu'.

    Any other name is checked here, once, before a model is built: a name torch does not know
    or a device this machine does not have (`cuda:7` on one GPU) is an InputError naming it
    and what is available, not a torch error from deep inside a model call."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(
            f"device {device!r} is not a torch device name; available here: {available_devices()}"
        ) from None
    if parsed.type == "cpu" and parsed.index in (None, 0):
        return device
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type == "cuda" and gpus and (parsed.index is None or parsed.index < gpus):
        return device
    if parsed.type == "mps" and parsed.index in (None, 0) and _mps_available():
        return device
    raise InputError(f"device {device!r} is not available here; available: {available_devices()}")


class GpuUnavailableError(JobAbortedError):
    """Ray gave a model actor GPUs but CUDA does not work in it (driver mismatch, a CPU-only
    torch wheel, a broken device): the job stops at once rather than run on the CPU ~100×
    slower for days. `models.allow_cpu_fallback: true` runs on the CPU instead."""


def cuda_state() -> dict[str, Any]:
    """What torch says about CUDA in this process, for provenance and error messages:
    `available`, `device_count`, `torch` and `cuda` versions (the wheel's build), and
    `allocation_error` (None when a tiny tensor could be made on cuda:0); on a working GPU
    also `device_name`, `capability` and the kernel `driver` version."""
    import torch

    state: dict[str, Any] = {
        "available": bool(torch.cuda.is_available()),
        "device_count": int(torch.cuda.device_count()) if torch.cuda.is_available() else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "allocation_error": None,
    }
    if not state["available"]:
        state["allocation_error"] = "torch.cuda.is_available() is False"
        return state
    try:
        torch.zeros(1, device="cuda:0").add_(1).item()
    except Exception as error:  # noqa: BLE001 - any CUDA failure is the answer
        state["allocation_error"] = f"{type(error).__name__}: {error}"
        return state
    state.update(
        device_name=torch.cuda.get_device_name(0),
        capability=".".join(map(str, torch.cuda.get_device_capability(0))),
        driver=nvidia_driver_version(),
    )
    return state


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver version from /proc/driver/nvidia/version (Linux), or None."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", f.read())
    except OSError:
        return None
    return found.group(1) if found else None


def check_assigned_gpus(gpu_ids: Sequence[Any], where: str, allow_cpu_fallback: bool) -> dict:
    """The device record of a worker that Ray gave `gpu_ids` (none: a CPU worker, no check):
    `ray_gpu_ids`, `cuda_visible_devices`, `device` ('cuda' or 'cpu'), `cpu_fallback`, and
    `cuda` (`cuda_state()`) when GPUs were assigned.

    With GPUs assigned and CUDA not working, raise GpuUnavailableError naming `where` (the
    node and stage), the ids and the torch.cuda state — unless `allow_cpu_fallback`, which
    returns `device='cpu'`, `cpu_fallback=True` (the caller logs it loudly)."""
    record: dict[str, Any] = {
        "ray_gpu_ids": [str(i) for i in gpu_ids],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": "cpu",
        "cpu_fallback": False,
    }
    if not gpu_ids:
        return record
    state = cuda_state()
    record["cuda"] = state
    if state["allocation_error"] is None:
        record["device"] = "cuda"
        return record
    if not allow_cpu_fallback:
        raise GpuUnavailableError(
            f"{where}: Ray assigned GPU ids {record['ray_gpu_ids']} "
            f"(CUDA_VISIBLE_DEVICES={record['cuda_visible_devices']!r}) but CUDA does not "
            f"work here: {state['allocation_error']} (torch {state['torch']}, built for "
            f"CUDA {state['cuda']}, {state['device_count']} devices visible). Fix the node's "
            "driver or torch wheel, or set models.allow_cpu_fallback: true to run on its CPU"
        )
    record["cpu_fallback"] = True
    return record


def available_devices() -> str:
    """The devices this process can use, for error messages: 'auto, cpu, cuda:0, ...'."""
    import torch

    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return ", ".join(names)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else an InputError (a ValueError) naming the
    choices."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast_dtype(precision: str) -> Any:
    """The torch dtype to autocast to for `precision` (None for fp32: no autocast)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(check_precision(precision))


def autocast(device_type: str, precision: str, cuda_only: bool = False) -> Any:
    """`torch.autocast` for `precision` on `device_type` ('cuda', 'cpu'); a no-op context for
    fp32 (and, with `cuda_only`, anywhere but CUDA: CPU training/eval stays fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    enabled = dtype is not None and (device_type == "cuda" or not cuda_only)
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)
