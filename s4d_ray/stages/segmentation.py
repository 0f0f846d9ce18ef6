"""The segmentation stage: ADE20K semantic labels per frame for the drift filter, one contract per backend.

`Segmenter(...).segment(frames [T,H,W,3] uint8 RGB) -> labels [T,H,W] uint8` (0 = background,
1..150 ADE20K classes, `LABEL_NAMES`), or None when segmentation is disabled. Built once per Ray
actor (the model loads in the constructor) and applied to one clip per call.

Backends:
- `neural`: DeepLabv3+ Xception-65 trained on ADE20K, the official frozen graph
  (`s4d_ray.models.deeplab`), run as Stereo4D runs it (long side 513, labels resized back with
  nearest); fp32, or bf16 / fp16 autocast on GPU.
- `cpu`: no segmentation. `segment` returns None, `enabled` is False and `provenance()` says
  the drift filter is off, so outputs record that sky/boundary/drift filtering was skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from s4d_ray.models.device import autocast_dtype, check_precision
from s4d_ray.track.ade20k import LABEL_NAMES, SKY_LABELS, STATIC_LABELS  # noqa: F401 (re-exported)

BACKENDS = ("neural", "cpu")

DISABLED_NOTE = "disabled (cpu backend): drift filter off"


class Segmenter:
    """The segmentation stage's callable: built once per Ray actor, `segment` applied to one clip per call.

    backend 'neural' loads the DeepLab checkpoint at `weights_uri` (release tarball, its
    frozen .pb, or a converted safetensors; any fsspec URI) onto `device`; `batch_size` frames
    run per forward pass. `input_size` is the square network input (513 as released; smaller
    only to trade accuracy for speed). backend 'cpu' segments nothing.
    """

    NEURAL_ONLY = frozenset({"weights_uri", "batch_size", "input_size"})
    """Options that mean nothing to the cpu backend (the engine's config rejects them there)."""

    def __init__(
        self,
        backend: str = "cpu",
        weights_uri: str | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 8,
        input_size: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        check_precision(precision)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = backend
        self.precision = precision
        self.batch_size = batch_size
        self.weights_uri = weights_uri
        self.model = None
        self._provenance: dict[str, Any] | None = None
        if backend == "cpu":
            if device != "cpu" or precision != "fp32":
                raise ValueError("the cpu backend runs on device 'cpu' in precision 'fp32'")
            return
        from s4d_ray.models import deeplab

        if weights_uri is None:
            weights_uri = deeplab.DEFAULT_URI
            self.weights_uri = weights_uri
        self.input_size = input_size or deeplab.INPUT_SIZE
        self.model = deeplab.load_deeplab(weights_uri, device=device)

    @property
    def enabled(self) -> bool:
        """Whether `segment` produces labels (False: the drift filter must be skipped)."""
        return self.model is not None

    def provenance(self) -> dict[str, Any]:
        """What produces this stage's output, for every clip's metadata: backend, model name,
        its config, weights (URI, bytes, sha256; None without weights) and precision."""
        if self.model is None:  # not enabled
            return {
                "backend": self.backend,
                "model": None,
                "note": DISABLED_NOTE,
                "weights_uri": None,
                "precision": self.precision,
            }
        if self._provenance is None:
            import torch

            from s4d_ray.models.weights import weights_version

            config = self.model.config
            self._provenance = {
                "backend": self.backend,
                "model": "deeplabv3plus_xception65_ade20k",
                "library": f"torch {torch.__version__}",
                "config": {
                    "output_stride": config.output_stride,
                    "atrous_rates": list(config.atrous_rates),
                    "num_classes": config.num_classes,
                    "input_size": self.input_size,
                },
                **weights_version(str(self.weights_uri)),
                "precision": self.precision,
            }
        return dict(self._provenance)

    def segment(self, frames: np.ndarray) -> np.ndarray | None:
        """ADE20K labels [T,H,W] uint8 of frames [T,H,W,3] uint8 RGB; None when disabled."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be [T,H,W,3] uint8, got {frames.shape} {frames.dtype}")
        if self.model is None:  # not enabled
            return None
        from s4d_ray.models.deeplab import segment_frames

        return segment_frames(
            self.model,
            frames,
            batch_size=self.batch_size,
            autocast_dtype=autocast_dtype(self.precision),
            input_size=self.input_size,
        )

    __call__ = segment
