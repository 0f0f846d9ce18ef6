"""Where and in which arithmetic a model runs."""

from __future__ import annotations

from typing import Any

from s4d_ray.errors import InputError

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
