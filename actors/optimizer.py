"""Optimiser reducer: batches several clips into one jitted JAX track optimisation call."""

from __future__ import annotations

from functools import partial

import numpy as np

from actors._common import record_stage_outcome
from s4d_ray.clip_stages import OPTIMIZE, batch_to_rows, failed, optimize_rows, rows_to_batch


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
            record_stage_outcome(row, OPTIMIZE, was_failed)
        return rows_to_batch(rows)
