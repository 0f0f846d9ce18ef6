"""Tiny model configurations shared by tests (fast on CPU, same code paths as full size).

Each neural backend says how to make its tiny model (`s4d_ray.stages.base.tiny_options`); this
module only gathers them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from s4d_ray.models.sea_raft import TINY_CONFIG
from s4d_ray.stages.base import MODEL_STAGES, tiny_options

TINY_SEA_RAFT = TINY_CONFIG
"""A tiny SEA-RAFT config (`s4d_ray.models.sea_raft.TINY_CONFIG`)."""

TINY_SEA_RAFT_KEYS = dataclasses.asdict(TINY_CONFIG)
"""The same config as official SEA-RAFT config keys."""


def write_tiny_neural_models(folder: Path) -> dict[str, dict[str, Any]]:
    """Checkpoints in the official formats with random weights under `folder`, one per model
    stage's neural backend — SEA-RAFT (tiny config, `model.safetensors`), BootsTAP (full size,
    `bootstapir_checkpoint_v2.pt`; run at 64 px) and DeepLab (converted `deeplab.safetensors`,
    output stride 16; run at 65 px) — and the `models` section of a config that runs them with
    the `neural` backend."""
    return {stage: tiny_options(stage, "neural", folder) for stage in MODEL_STAGES}
