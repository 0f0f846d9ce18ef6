"""Where a model runs."""

from __future__ import annotations


def pick_device(device: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible (e.g. the one Ray gave this actor), else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
