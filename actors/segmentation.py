"""Segmentation actor: pins DeepLabv3+ (neural) for the semantic drift filter; cpu = off."""

from __future__ import annotations

from functools import partial
from typing import Any

from actors._common import apply_stage, neural_options
from s4d_ray.clip_stages import SEGMENTATION, Row, segment_points
from s4d_ray.stages.segmentation import Segmenter


class SegmentationActor:
    """Loads the segmenter once; per call, ADE20K labels sampled at the clip's track points."""

    def __init__(
        self, backend: str, options: dict[str, Any], device: str = "auto", precision: str = "fp32"
    ):
        options = dict(options)
        if backend == "neural":
            options = neural_options(options, device, precision)
        self.segmenter = Segmenter(backend, **options)

    def __call__(self, row: Row) -> Row:
        return apply_stage(row, SEGMENTATION, partial(segment_points, segmenter=self.segmenter))
