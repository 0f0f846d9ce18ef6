"""Tiny model configurations shared by tests (fast on CPU, same code paths as full size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s4d_ray.models.sea_raft import SEARAFTConfig

TINY_SEA_RAFT_KEYS = {
    "use_var": True,
    "var_min": 0,
    "var_max": 10,
    "pretrain": "resnet18",
    "initial_dim": 8,
    "block_dims": [8, 12, 16],
    "radius": 2,
    "dim": 8,
    "num_blocks": 1,
    "iters": 2,
}
"""Official SEA-RAFT config keys of a tiny model."""

TINY_SEA_RAFT = SEARAFTConfig.from_dict(TINY_SEA_RAFT_KEYS)


def write_tiny_neural_models(folder: Path) -> dict[str, dict[str, Any]]:
    """Checkpoints in the official formats with random weights under `folder` — SEA-RAFT
    (tiny config, safetensors), BootsTAP (full size, torch zip; run at 64 px) and DeepLab
    (converted safetensors, output stride 16; run at 65 px) — and the `models` section of a
    config that runs them with the `neural` backend."""
    import torch
    from safetensors.torch import save_model

    from s4d_ray.models.deeplab import DeepLabConfig, DeepLabV3Plus, save_converted
    from s4d_ray.models.sea_raft import SEARAFT
    from s4d_ray.models.tapir import TAPIR

    torch.manual_seed(0)
    save_model(SEARAFT(TINY_SEA_RAFT), str(folder / "model.safetensors"))
    torch.save(TAPIR().state_dict(), folder / "bootstapir_checkpoint_v2.pt")
    deeplab_config = DeepLabConfig(output_stride=16, atrous_rates=(6, 12, 18))
    save_converted(
        DeepLabV3Plus(deeplab_config).state_dict(),
        deeplab_config,
        str(folder / "deeplab.safetensors"),
    )
    return {
        "stereo": {
            "weights_uri": str(folder / "model.safetensors"),
            "config": TINY_SEA_RAFT_KEYS,
            "batch_size": 4,
        },
        "tracking": {
            "weights_uri": str(folder / "bootstapir_checkpoint_v2.pt"),
            "query_stride": 64,
            "resolution": 64,
        },
        "segmentation": {"weights_uri": str(folder / "deeplab.safetensors"), "input_size": 65},
    }
