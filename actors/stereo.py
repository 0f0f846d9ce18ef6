"""Stereo actor: pins SEA-RAFT (neural) or SGBM (cpu) and turns each clip's pair into depth."""

from __future__ import annotations

from functools import partial
from typing import Any

from actors._common import apply_stage, neural_options
from s4d_ray.clip_stages import STEREO, Row, stereo_depth
from s4d_ray.stages.stereo import StereoMatcher


class StereoActor:
    """Loads the matcher once; per call, clip row (left, right) → depth, right eye dropped."""

    def __init__(
        self, backend: str, options: dict[str, Any], device: str = "auto", precision: str = "fp32"
    ):
        options = dict(options)
        if backend == "neural":
            if isinstance(options.get("config"), dict):
                from s4d_ray.models.sea_raft import SEARAFTConfig

                options["config"] = SEARAFTConfig.from_dict(options["config"])
            options = neural_options(options, device, precision)
        self.matcher = StereoMatcher(backend, **options)

    def __call__(self, row: Row) -> Row:
        return apply_stage(row, STEREO, partial(stereo_depth, matcher=self.matcher))
