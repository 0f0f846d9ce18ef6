"""Where and in which arithmetic a model runs."""

from __future__ import annotations

from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
"""Neural backend arithmetic: fp32, or bf16 / fp16 autocast."""


def pick_device(device: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible (e.g. the one Ray gave this actor), else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
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
