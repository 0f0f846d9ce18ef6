"""Tracking actor: pins BootsTAP (neural) or Lucas–Kanade (cpu) for dense 2D tracks."""

from __future__ import annotations

from functools import partial
from typing import Any

from actors._common import apply_stage, neural_options
from s4d_ray.clip_stages import TRACKING, Row, track_points
from s4d_ray.stages.tracking import Tracker


class TrackingActor:
    """Loads the tracker once; per call, a clip's left frames → pruned dense 2D tracks."""

    def __init__(
        self, backend: str, options: dict[str, Any], device: str = "auto", precision: str = "fp32"
    ):
        options = dict(options)
        if backend == "neural":
            from s4d_ray.models.tapir import DEFAULT_URI

            options.setdefault("weights_uri", DEFAULT_URI)
            options = neural_options(options, device, precision)
        self.tracker = Tracker(backend, **options)

    def __call__(self, row: Row) -> Row:
        return apply_stage(row, TRACKING, partial(track_points, tracker=self.tracker))
