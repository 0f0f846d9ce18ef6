"""Optimiser reducer: batches several clips into one jitted JAX track optimisation call."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from s4d_ray import metrics
from s4d_ray.clip_stages import OPTIMIZE, failed, optimize_rows


def batch_to_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Ray Data numpy batch (column → array over clips) → list of clip rows."""
    size = len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(size)]


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """List of clip rows → numpy batch; ragged arrays become object columns."""
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        column = np.empty(len(values), dtype=object)
        column[:] = values
        batch[key] = column
    return batch


class OptimizerActor:
    """Holds the jitted optimiser (compiled once per frame bucket) across batches of clips."""

    def __init__(self, num_steps: int = 100):
        from s4d_ray.optimize import optimize_clips

        self.optimize = partial(optimize_clips, num_steps=num_steps)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = batch_to_rows(batch)
        before = [failed(row) for row in rows]
        rows = optimize_rows(rows, self.optimize)
        for was_failed, row in zip(before, rows, strict=True):
            if not was_failed:
                if failed(row):
                    metrics.record_clip_failed(OPTIMIZE.name)
                else:
                    metrics.record_stage_from_row(row, OPTIMIZE.name)
        return rows_to_batch(rows)
