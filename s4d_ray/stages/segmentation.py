"""The segmentation stage: ADE20K semantic labels per frame for the drift filter, one contract per backend.

`Segmenter(backend, **options).segment(frames [T,H,W,3] uint8 RGB) -> labels [T,H,W] uint8`
(0 = background, 1..150 ADE20K classes, `LABEL_NAMES`), or None when segmentation is disabled.
Built once per Ray actor (the model loads in the constructor) and applied to one clip per call.

Backends (`stages.base` registry; options: `DeepLabOptions`, `DisabledOptions`):
- `neural`: DeepLabv3+ Xception-65 trained on ADE20K, the official frozen graph
  (`s4d_ray.models.deeplab`), run as Stereo4D runs it (long side 513, labels resized back with
  nearest); fp32, or bf16 / fp16 autocast on GPU.
- `cpu`: no segmentation. `segment` returns None, `enabled` is False and `provenance()` says
  the drift filter is off, so outputs record that sky/boundary/drift filtering was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s4d_ray.models.device import autocast_dtype, check_precision
from s4d_ray.stages.base import ModelStage, check_frames, positive, register_backend
from s4d_ray.track.ade20k import LABEL_NAMES, SKY_LABELS, STATIC_LABELS  # noqa: F401 (re-exported)

DISABLED_NOTE = "disabled (cpu backend): drift filter off"


@dataclass(frozen=True)
class DeepLabOptions:
    """Options of the `neural` backend (`DeepLabSegmentation`): the checkpoint (release
    tarball, its frozen .pb, or a converted safetensors; any fsspec URI; None = the official
    release, `models.deeplab.DEFAULT_URI`), where and in which arithmetic it runs, frames per
    forward pass, and the square network input in px (None = 513 as released; smaller only to
    trade accuracy for speed)."""

    weights_uri: str | None = None
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = positive(8)
    input_size: int | None = positive(None)


def _tiny_deeplab(folder: Path) -> dict[str, Any]:
    """`deeplab.safetensors` under `folder`: DeepLabv3+ at output stride 16 with random weights
    (converted format), and options that run it at a 65 px input."""
    import torch

    from s4d_ray.models.deeplab import DeepLabConfig, DeepLabV3Plus, save_converted

    torch.manual_seed(0)
    config = DeepLabConfig(output_stride=16, atrous_rates=(6, 12, 18))
    path = folder / "deeplab.safetensors"
    save_converted(DeepLabV3Plus(config).state_dict(), config, str(path))
    return {"weights_uri": str(path), "input_size": 65}


@register_backend("segmentation", "neural", DeepLabOptions, tiny=_tiny_deeplab)
class DeepLabSegmentation:
    """DeepLabv3+ ADE20K labels of frames, `batch_size` frames per forward pass."""

    enabled = True

    def __init__(self, options: DeepLabOptions = DeepLabOptions()) -> None:
        from s4d_ray.models import deeplab

        self.precision = check_precision(options.precision)
        self.batch_size = options.batch_size
        self.weights_uri = options.weights_uri or deeplab.DEFAULT_URI
        self.input_size = options.input_size or deeplab.INPUT_SIZE
        self.model = deeplab.load_deeplab(self.weights_uri, device=options.device)

    def provenance(self) -> dict[str, Any]:
        """DeepLab, its config, the checkpoint (URI, size, sha256) and the precision."""
        import torch

        from s4d_ray.models.weights import weights_version

        config = self.model.config
        return {
            "model": "deeplabv3plus_xception65_ade20k",
            "library": f"torch {torch.__version__}",
            "config": {
                "output_stride": config.output_stride,
                "atrous_rates": list(config.atrous_rates),
                "num_classes": config.num_classes,
                "input_size": self.input_size,
            },
            **weights_version(self.weights_uri),
            "precision": self.precision,
        }

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """ADE20K labels [T,H,W] uint8 of frames [T,H,W,3] uint8 RGB."""
        from s4d_ray.models.deeplab import segment_frames

        return segment_frames(
            self.model,
            frames,
            batch_size=self.batch_size,
            autocast_dtype=autocast_dtype(self.precision),
            input_size=self.input_size,
        )


@dataclass(frozen=True)
class DisabledOptions:
    """The `cpu` backend segments nothing and takes no options."""


@register_backend("segmentation", "cpu", DisabledOptions)
class DisabledSegmentation:
    """No segmentation: no labels, and a provenance that says the drift filter is off."""

    enabled = False

    def __init__(self, options: DisabledOptions = DisabledOptions()) -> None:
        """Nothing to load."""

    def provenance(self) -> dict[str, Any]:
        """No model, the note that the drift filter is off, no weights."""
        return {"model": None, "note": DISABLED_NOTE, "weights_uri": None, "precision": "fp32"}

    def __call__(self, frames: np.ndarray) -> None:
        """None: no labels."""
        return None


class Segmenter(ModelStage, stage="segmentation"):
    """The segmentation stage's callable: `Segmenter(backend, **options)` — backend 'neural'
    takes `DeepLabOptions`, 'cpu' none —, built once per Ray actor, `segment` applied to one
    clip per call."""

    @property
    def enabled(self) -> bool:
        """Whether `segment` produces labels (False: the drift filter must be skipped)."""
        return bool(self.backend.enabled)

    def segment(self, frames: np.ndarray) -> np.ndarray | None:
        """ADE20K labels [T,H,W] uint8 of frames [T,H,W,3] uint8 RGB; None when disabled."""
        check_frames(frames)
        labels: np.ndarray | None = self.backend(frames)
        return labels

    __call__ = segment
