"""What every model actor shares: stage options for a device, running a stage with metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from s4d_ray import metrics
from s4d_ray.clip_stages import Row, Stage, failed, run_stage
from s4d_ray.models.device import pick_device


def neural_options(options: dict[str, Any], device: str, precision: str) -> dict[str, Any]:
    """Stage options for a neural backend: the device this actor got, and the precision."""
    return {**options, "device": pick_device(device), "precision": precision}


def apply_stage(row: Row, stage: Stage, fn: Callable[[Row], Row]) -> Row:
    """`run_stage` plus the stage's metrics (seconds, and a failure count if it failed here)."""
    was_failed = failed(row)
    row = run_stage(row, stage, fn)
    record_stage_outcome(row, stage, was_failed)
    return row


def record_stage_outcome(row: Row, stage: Stage, was_failed: bool) -> None:
    """Metrics of one clip after `stage`: its seconds, or a failure if it failed right here."""
    if was_failed:
        return
    if failed(row):
        metrics.record_clip_failed(stage.name)
    else:
        metrics.record_stage_from_row(row, stage.name)
