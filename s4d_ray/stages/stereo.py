"""The stereo stage: stereo flow of rectified pairs, one contract for every backend.

`StereoMatcher(backend, **options)(left, right) -> (flow_fwd, flow_bwd)`, frames [T,H,W,3] uint8
RGB of the rectified left and right eye, flows [T,H,W,2] float32 px (x, y):
- `flow_fwd` = left→right: a left pixel x matches right pixel x + flow_fwd(x); for a rectified
  pair the x-flow is −disparity (≤ 0) and the y-flow ≈ 0.
- `flow_bwd` = right→left: x-flow = +disparity of the right image.
The depth stage (`s4d_ray.track.depth.depth_from_flow`) turns them into metric depth and invalidates
pixels by the forward-backward check, |flow_y| > 1 px and the depth range.

Backends (`stages.base` registry; options: `SEARAFTOptions`, `SGBMOptions`):
- `neural`: SEA-RAFT spring-M as Stereo4D runs it (`inference_raft.py`, config `scale` = −1):
  both images ×0.5 (bilinear), last iteration's flow, upsampled ×2 (bilinear) and scaled ×2;
  both directions in one batch. fp32, or bf16 / fp16 autocast.
- `cpu`: OpenCV semi-global matching (`cv2.StereoSGBM`) in both directions, y-flow 0. Pixels
  without a match (left border, occlusions, failed uniqueness / left-right checks, speckles)
  are NaN in both components: no number to mistake for a measurement, and every `<=` test of
  the depth stage rejects it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from s4d_ray.models.device import autocast, check_precision
from s4d_ray.stages.base import (
    ModelStage,
    OptionError,
    check_pair,
    positive,
    register_backend,
    type_name,
)

if TYPE_CHECKING:
    import torch

    from s4d_ray.models.sea_raft import SEARAFTConfig

NEURAL_SCALE = 0.5
"""Image scale the flow network sees: 2**scale with spring-M's `scale` = −1."""


@dataclass(frozen=True)
class SGBMOptions:
    """Options of the `cpu` backend (`SGBMStereo`): disparity range in px (a positive multiple
    of 16), block size in px, uniqueness margin in %, speckle filter (window in px, disparity
    range in px) and the median filter's size (0 = off, 3 or 5)."""

    num_disparities: int = 128
    block_size: int = positive(9)
    uniqueness_ratio: int = 10
    speckle_window_size: int = 100
    speckle_range: int = 2
    median_size: int = 5

    def __post_init__(self) -> None:
        if self.median_size not in (0, 3, 5):
            raise OptionError("median_size", f"must be 0 (off), 3 or 5, got {self.median_size}")
        if self.num_disparities <= 0 or self.num_disparities % 16:
            raise OptionError(
                "num_disparities",
                f"must be a positive multiple of 16, got {self.num_disparities}",
            )


@register_backend("stereo", "cpu", SGBMOptions)
class SGBMStereo:
    """Semi-global matching on grey levels; disparities in [0, num_disparities) at 1/16 px.

    The backward pass matches the mirrored pair (right as reference), which gives the right
    image's disparity with the same matcher. Defaults: 9×9 blocks, P1 = 8·3·9², P2 = 32·3·9²
    (OpenCV's recommended smoothness), uniqueness 10 %, left-right check within 1 px, speckles
    under 100 px with > 2 px disparity jumps removed, then a 5×5 median over matched pixels:
    the depth stage's 3 % relative-gradient check (made for RAFT's smooth flow) otherwise
    rejects most of SGBM's quantised disparities (valid depth on 1024×512 synthetic clips: 14 %
    with 5×5 blocks and no median, 28 % with these defaults). 128 disparities cover depths beyond 0.22 m
    for the 512², 60° hfov, 6.3 cm rig (fx ≈ 443 px).
    """

    def __init__(self, options: SGBMOptions = SGBMOptions()) -> None:
        self.median_size = options.median_size
        self.num_disparities = options.num_disparities
        block_size = options.block_size
        self._matcher = cv2.StereoSGBM.create(
            minDisparity=0,
            numDisparities=options.num_disparities,
            blockSize=block_size,
            P1=8 * 3 * block_size**2,
            P2=32 * 3 * block_size**2,
            disp12MaxDiff=1,
            uniquenessRatio=options.uniqueness_ratio,
            speckleWindowSize=options.speckle_window_size,
            speckleRange=options.speckle_range,
            mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
        )
        self.settings = dataclasses.asdict(options)

    def provenance(self) -> dict[str, Any]:
        """The matcher and its settings (no weights)."""
        return {
            "model": "opencv-sgbm-3way",
            "library": f"opencv {cv2.__version__}",
            "config": dict(self.settings),
            "weights_uri": None,
            "precision": "fp32",
        }

    def _disparity(self, reference: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Disparity [H,W] float32 px of `reference` (matches `other` at x − d); NaN: no match.

        OpenCV leaves the first `num_disparities` columns unmatched (their search range leaves
        the image); both images are padded on the left by that much (black, like the rectified
        border) so those columns are matched against whatever part of the range is inside.
        """
        pad = self.num_disparities
        fixed_point = self._matcher.compute(
            cv2.copyMakeBorder(reference, 0, 0, pad, 0, cv2.BORDER_CONSTANT, value=0),
            cv2.copyMakeBorder(other, 0, 0, pad, 0, cv2.BORDER_CONSTANT, value=0),
        )[:, pad:]
        disparity: np.ndarray = fixed_point.astype(np.float32) / 16.0
        unmatched = fixed_point < 0
        if self.median_size:
            disparity[unmatched] = 0.0
            disparity = cv2.medianBlur(disparity, self.median_size)
        disparity[unmatched] = np.nan
        return disparity

    def __call__(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flow_fwd, flow_bwd) [T,H,W,2] float32 px of left/right [T,H,W,3] uint8 RGB."""
        flow_fwd = np.zeros((*left.shape[:3], 2), np.float32)
        flow_bwd = np.zeros_like(flow_fwd)
        for t in range(len(left)):
            grey_left = cv2.cvtColor(left[t], cv2.COLOR_RGB2GRAY)
            grey_right = cv2.cvtColor(right[t], cv2.COLOR_RGB2GRAY)
            disparity_left = self._disparity(grey_left, grey_right)
            mirrored = self._disparity(
                np.ascontiguousarray(grey_right[:, ::-1]), np.ascontiguousarray(grey_left[:, ::-1])
            )
            disparity_right = mirrored[:, ::-1]
            flow_fwd[t, ..., 0] = -disparity_left
            flow_fwd[t, ..., 1] = np.where(np.isnan(disparity_left), np.nan, 0.0)
            flow_bwd[t, ..., 0] = disparity_right
            flow_bwd[t, ..., 1] = np.where(np.isnan(disparity_right), np.nan, 0.0)
        return flow_fwd, flow_bwd


FlowFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""Flow network: (image1, image2) [B,3,h,w] float 0..255 -> flow image1→image2 [B,2,h,w] px."""


def half_resolution_flow(
    flow_fn: FlowFn, image1: torch.Tensor, image2: torch.Tensor
) -> torch.Tensor:
    """Flow [B,2,H,W] px of [B,3,H,W] images computed at half resolution, as Stereo4D does.

    Images are halved (bilinear, align_corners=False), the flow is upsampled to H×W (bilinear)
    and its vectors scaled ×2 back to full-resolution pixels.
    """
    import torch.nn.functional as F

    height, width = image1.shape[-2:]
    small1 = F.interpolate(image1, scale_factor=NEURAL_SCALE, mode="bilinear", align_corners=False)
    small2 = F.interpolate(image2, scale_factor=NEURAL_SCALE, mode="bilinear", align_corners=False)
    flow = flow_fn(small1, small2).float()
    upsampled = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
    return upsampled / NEURAL_SCALE


def sea_raft_batch_size(memory_bytes: int, height: int, width: int) -> int:
    """Image pairs per SEA-RAFT forward that fit in `memory_bytes` of free accelerator memory.

    Counted at the network's half resolution: ~150 live values per pixel at the peak (ResNet
    maps of both feature passes at 1/2 scale, the five kept ×8-upsampled flow/info outputs,
    the convex-upsampling products), taken as 400 fp32 values for allocator slack; half the
    free memory is left for everything else. Estimated, not yet measured on a GPU; a CUDA
    out-of-memory error halves the batch and retries.
    """
    pixels = math.ceil(height * NEURAL_SCALE) * math.ceil(width * NEURAL_SCALE)
    fitting = int(memory_bytes // 2 // (400 * 4 * pixels))
    return 2 ** int(math.log2(fitting)) if fitting >= 1 else 1


def _pairs(
    left: np.ndarray, right: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image pairs start..stop of a clip's 2T: pair i < T is (left_i, right_i) (forward flow),
    pair T + i is (right_i, left_i) (backward flow). Returns (image1, image2) [B,H,W,3]."""
    num_frames = len(left)
    fwd = slice(min(start, num_frames), min(stop, num_frames))
    bwd = slice(max(start - num_frames, 0), max(stop - num_frames, 0))
    return np.concatenate([left[fwd], right[bwd]]), np.concatenate([right[fwd], left[bwd]])


@dataclass(frozen=True)
class SEARAFTOptions:
    """Options of the `neural` backend (`SEARAFTStereo`): the checkpoint (any fsspec URI,
    safetensors; None = the official spring-M file, `models.sea_raft.DEFAULT_URI`), its
    architecture (official SEA-RAFT config keys or a `SEARAFTConfig`; None = spring-M), where
    and in which arithmetic it runs, and image pairs per forward (None = fitted to free GPU
    memory, 8 on CPU)."""

    weights_uri: str | None = None
    config: SEARAFTConfig | Mapping[str, Any] | None = None
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int | None = positive(None)

    def __post_init__(self) -> None:
        """A config is checked by the model's own reader (imports torch: only when given)."""
        if self.config is None:
            return
        from s4d_ray.models.sea_raft import SEARAFTConfig

        if isinstance(self.config, SEARAFTConfig):
            return
        if not isinstance(self.config, Mapping):
            raise OptionError(
                "config",
                f"must be a mapping of SEA-RAFT config keys, got {type_name(self.config)}",
            )
        try:
            SEARAFTConfig.from_dict(self.config)
        except (TypeError, ValueError) as error:
            raise OptionError("config", str(error)) from error


def _tiny_sea_raft(folder: Path) -> dict[str, Any]:
    """`model.safetensors` under `folder`: SEA-RAFT's tiny config (`models.sea_raft.TINY_CONFIG`)
    with random weights, and the options that run it."""
    import torch
    from safetensors.torch import save_model

    from s4d_ray.models.sea_raft import SEARAFT, TINY_CONFIG

    torch.manual_seed(0)
    path = folder / "model.safetensors"
    save_model(SEARAFT(TINY_CONFIG), str(path))
    keys = {**dataclasses.asdict(TINY_CONFIG), "block_dims": list(TINY_CONFIG.block_dims)}
    return {"weights_uri": str(path), "config": keys, "batch_size": 4}


@register_backend("stereo", "neural", SEARAFTOptions, tiny=_tiny_sea_raft)
class SEARAFTStereo:
    """SEA-RAFT flow in both directions; each forward holds `batch_size` image pairs
    (a frame's fwd and bwd pair count as two). batch_size None = fitted to free GPU memory
    (8 on CPU)."""

    def __init__(self, options: SEARAFTOptions = SEARAFTOptions()) -> None:
        import torch

        from s4d_ray.models.sea_raft import DEFAULT_URI, load_sea_raft

        check_precision(options.precision)
        self.weights_uri = options.weights_uri or DEFAULT_URI
        self.device = torch.device(options.device)
        self.model = load_sea_raft(self.weights_uri, options.config).to(self.device)
        self.precision = options.precision
        self.batch_size = options.batch_size

    def provenance(self) -> dict[str, Any]:
        """SEA-RAFT, its config, the checkpoint (URI, size, sha256) and the precision."""
        import dataclasses

        import torch

        from s4d_ray.models.weights import weights_version

        return {
            "model": "sea-raft",
            "library": f"torch {torch.__version__}",
            "config": {**dataclasses.asdict(self.model.config), "scale": NEURAL_SCALE},
            **weights_version(self.weights_uri),
            "precision": self.precision,
        }

    def _flow(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:

        with autocast(self.device.type, self.precision):
            return self.model(image1, image2, test_mode=True)["flow"][-1]

    def _batch_size(self, height: int, width: int) -> int:
        import torch

        if self.batch_size is not None:
            return self.batch_size
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return sea_raft_batch_size(free, height, width)
        return 8

    def __call__(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flow_fwd, flow_bwd) [T,H,W,2] float32 px of left/right [T,H,W,3] uint8 RGB."""
        import torch

        num_frames, height, width = left.shape[:3]
        flows = np.empty((2 * num_frames, height, width, 2), np.float32)
        batch = max(1, self._batch_size(height, width))
        start = 0
        while start < 2 * num_frames:
            stop = min(start + batch, 2 * num_frames)
            try:
                with torch.inference_mode():
                    frames1, frames2 = _pairs(left, right, start, stop)
                    image1, image2 = self._to_device(frames1), self._to_device(frames2)
                    flow = half_resolution_flow(self._flow, image1, image2)
            except torch.cuda.OutOfMemoryError:
                if batch == 1:
                    raise
                batch //= 2
                self.batch_size = batch
                torch.cuda.empty_cache()
                continue
            flows[start:stop] = flow.permute(0, 2, 3, 1).cpu().numpy()
            start = stop
        return flows[:num_frames], flows[num_frames:]

    def _to_device(self, frames: np.ndarray) -> torch.Tensor:
        """[B,H,W,3] uint8 -> [B,3,H,W] float32 0..255 on the model's device."""
        import torch

        return torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float()


class StereoMatcher(ModelStage, stage="stereo"):
    """The stereo stage's callable: `StereoMatcher(backend, **options)` — backend 'cpu' takes
    `SGBMOptions`, 'neural' `SEARAFTOptions` —, built once (e.g. per Ray actor) and applied to
    one clip per call. `provenance()` says what produces the flow."""

    def __call__(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flow_fwd left→right, flow_bwd right→left) [T,H,W,2] float32 px of [T,H,W,3] uint8."""
        check_pair(left, right)
        return self.backend(left, right)
