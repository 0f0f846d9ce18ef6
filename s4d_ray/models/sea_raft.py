"""SEA-RAFT optical flow (Wang, Lipson & Deng, ECCV 2024), written to load the official weights.

Module and parameter names follow princeton-vl/SEA-RAFT so the official `model.safetensors`
(spring-M: `MemorySlices/Tartan-C-T-TSKH-spring540x960-M`) loads unchanged with strict key
checking. Images go in as [B,3,H,W] float in 0..255; flow comes out as [B,2,H,W] px
(x then y), the displacement from image1 to image2.

Checkpoint quirk: in each down-sampling residual block the batch norm is registered twice,
as `bn3` and as `downsample.1` (one module, two names). `safetensors.torch.save_model`, which
wrote the official file (the Hub mixin's save), stores each shared tensor once under the
alphabetically first name, so the file holds `...bn3.*` and omits `...downsample.1.*` (the
header metadata maps each omitted name to the kept one). The loader accepts either name and
fills the other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from s4d_ray.models.weights import CheckpointError, cached_path

DEFAULT_URI = (
    "https://huggingface.co/MemorySlices/Tartan-C-T-TSKH-spring540x960-M/resolve/main/"
    "model.safetensors"
)

# Keys of the official JSON configs that only concern training or evaluation scripts.
_NON_MODEL_KEYS = frozenset(
    {
        "name",
        "dataset",
        "gpus",
        "image_size",
        "scale",
        "batch_size",
        "epsilon",
        "lr",
        "wdecay",
        "dropout",
        "clip",
        "gamma",
        "num_steps",
        "restore_ckpt",
        "coarse_config",
    }
)

_BLOCKS_PER_STAGE = {"resnet18": (2, 2, 2), "resnet34": (3, 4, 6)}
_CORR_LEVELS = 4


@dataclasses.dataclass(frozen=True)
class SEARAFTConfig:
    """Architecture and inference keys of an official SEA-RAFT JSON config (same names)."""

    use_var: bool
    var_min: float
    var_max: float
    pretrain: str
    initial_dim: int
    block_dims: tuple[int, int, int]
    radius: int
    dim: int
    num_blocks: int
    iters: int

    def __post_init__(self) -> None:
        if self.pretrain not in _BLOCKS_PER_STAGE:
            raise ValueError(f"pretrain must be one of {sorted(_BLOCKS_PER_STAGE)}")
        object.__setattr__(self, "block_dims", tuple(self.block_dims))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> SEARAFTConfig:
        """Config from an official JSON dict; training-only keys are ignored, unknown keys fail."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - fields - _NON_MODEL_KEYS
        if unknown:
            raise ValueError(f"unknown SEA-RAFT config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in config.items() if k in fields})

    @property
    def corr_channels(self) -> int:
        """Correlation features per pixel: 4 levels × (2·radius+1)² samples."""
        return _CORR_LEVELS * (2 * self.radius + 1) ** 2


# `config/eval/spring-M.json` of princeton-vl/SEA-RAFT (model keys only).
SPRING_M_CONFIG = SEARAFTConfig(
    use_var=True,
    var_min=0,
    var_max=10,
    pretrain="resnet34",
    initial_dim=64,
    block_dims=(64, 128, 256),
    radius=4,
    dim=128,
    num_blocks=2,
    iters=4,
)

TINY_CONFIG = dataclasses.replace(
    SPRING_M_CONFIG,
    pretrain="resnet18",
    initial_dim=8,
    block_dims=(8, 12, 16),
    radius=2,
    dim=8,
    num_blocks=1,
    iters=2,
)
"""A tiny SEA-RAFT: fast on CPU, the same code paths as spring-M (tests, CPU benchmarks)."""


class ResidualBlock(nn.Module):
    """ResNet basic block (two 3×3 convs with batch norm); 1×1 conv + BN shortcut when reshaping.

    `bn3` is also registered as `downsample[1]`, as in the official model.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.downsample = None
        else:
            self.bn3 = nn.BatchNorm2d(planes)
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride), self.bn3
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)


class ResNetFPN(nn.Module):
    """ResNet encoder to 1/8 resolution: [B,input_dim,H,W] -> [B,output_dim,H/8,W/8]."""

    def __init__(self, config: SEARAFTConfig, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, config.initial_dim, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(config.initial_dim)
        in_planes = config.initial_dim
        stages = []
        for planes, stride, count in zip(
            config.block_dims, (1, 2, 2), _BLOCKS_PER_STAGE[config.pretrain], strict=True
        ):
            blocks = [ResidualBlock(in_planes, planes, stride)]
            blocks += [ResidualBlock(planes, planes, 1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.final_conv = nn.Conv2d(in_planes, output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.final_conv(x)


class ConvNextBlock(nn.Module):
    """Depthwise 7×7 conv, LayerNorm, 4× MLP with layer scale, residual, then a 1×1 projection."""

    def __init__(self, dim: int, output_dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * output_dim)
        self.pwconv2 = nn.Linear(4 * output_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.final = nn.Conv2d(dim, output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return self.final(x + y)


class BasicMotionEncoder(nn.Module):
    """Correlation + current flow -> motion features [B,dim,h,w] (last 2 channels = the flow)."""

    def __init__(self, corr_channels: int, dim: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, dim * 2, 1)
        self.convc2 = nn.Conv2d(dim * 2, dim + dim // 2, 3, padding=1)
        self.convf1 = nn.Conv2d(2, dim, 7, padding=3)
        self.convf2 = nn.Conv2d(dim, dim // 2, 3, padding=1)
        self.conv = nn.Conv2d(dim * 2, dim - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class BasicUpdateBlock(nn.Module):
    """Recurrent refinement: hidden state [B,hdim,h,w] updated by ConvNeXt blocks."""

    def __init__(self, config: SEARAFTConfig, hdim: int, cdim: int) -> None:
        super().__init__()
        self.encoder = BasicMotionEncoder(config.corr_channels, cdim)
        self.refine = nn.ModuleList(
            ConvNextBlock(2 * cdim + hdim, hdim) for _ in range(config.num_blocks)
        )

    def forward(
        self, net: torch.Tensor, context: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
    ) -> torch.Tensor:
        inp = torch.cat([context, self.encoder(flow, corr)], dim=1)
        for block in self.refine:
            net = block(torch.cat([net, inp], dim=1))
        return net


def coords_grid(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Pixel coordinates [B,2,H,W] (x then y)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys])[None].expand(batch, -1, -1, -1)


class CorrPyramid:
    """All-pairs correlation of 1/8-resolution features at 4 scales of the second map.

    Level i correlates fmap1 with fmap2 bilinearly halved i times, normalised by √channels.
    `lookup` samples a (2r+1)² window around each target position per level.
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, radius: int) -> None:
        batch, channels, height, width = fmap1.shape
        self.radius = radius
        self.levels = []
        query = fmap1.reshape(batch, channels, height * width).transpose(1, 2)
        for level in range(_CORR_LEVELS):
            if level > 0:
                # Halve each axis; a 1-px axis (tiny inputs) stays 1 px instead of vanishing.
                scale = tuple(0.5 if n >= 2 else 1.0 for n in fmap2.shape[-2:])
                fmap2 = F.interpolate(
                    fmap2, scale_factor=scale, mode="bilinear", align_corners=False
                )
            h2, w2 = fmap2.shape[-2:]
            corr = query @ fmap2.reshape(batch, channels, h2 * w2)
            corr = corr / math.sqrt(channels)
            self.levels.append(corr.reshape(batch * height * width, 1, h2, w2))

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [B,2,h,w] px at 1/8 -> correlation features [B, 4·(2r+1)², h, w] float32.

        Channel order per level: x offset major, y offset minor (as the official model).
        """
        batch, _, height, width = coords.shape
        r = self.radius
        offsets = torch.linspace(-r, r, 2 * r + 1, device=coords.device)
        x_offset, y_offset = torch.meshgrid(offsets, offsets, indexing="ij")
        window = torch.stack([x_offset, y_offset], dim=-1)[None]
        centres = coords.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2)
        features = []
        for level, corr in enumerate(self.levels):
            h2, w2 = corr.shape[-2:]
            points = centres / 2**level + window
            # align_corners=True normalisation; a 1-px level (tiny inputs) maps every point to
            # its only pixel instead of dividing by zero.
            scale = torch.tensor([2.0 / max(w2 - 1, 1), 2.0 / max(h2 - 1, 1)], device=coords.device)
            sampled = F.grid_sample(corr, points * scale - 1, align_corners=True)
            features.append(sampled.reshape(batch, height, width, -1))
        return torch.cat(features, dim=-1).permute(0, 3, 1, 2).contiguous().float()


def _pad_to_multiple_of_8(height: int, width: int) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) that centre the image in a multiple-of-8 frame."""
    pad_h = -height % 8
    pad_w = -width % 8
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


class SEARAFT(nn.Module):
    """SEA-RAFT: context/feature ResNets, correlation pyramid, ConvNeXt update, convex upsampling.

    `forward(image1, image2, iters=None, flow_gt=None, test_mode=False)` takes [B,3,H,W]
    images in 0..255 and returns `{'final', 'flow', 'info', 'nf'}`: `flow` [B,2,H,W] px and
    `info` [B,4,H,W] (mixture weights 2 + log-scales 2) are lists over iterations (entry 0 is
    the direct prediction, the last is the answer); `nf` is the mixture-of-Laplace loss per
    iteration when not in test mode (needs `flow_gt`), else None.
    """

    def __init__(self, config: SEARAFTConfig | Mapping[str, Any] = SPRING_M_CONFIG) -> None:
        super().__init__()
        if not isinstance(config, SEARAFTConfig):
            config = SEARAFTConfig.from_dict(config)
        self.config = config
        dim = config.dim
        self.cnet = ResNetFPN(config, input_dim=6, output_dim=2 * dim)
        self.init_conv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1)
        self.upsample_weight = nn.Sequential(
            nn.Conv2d(dim, 2 * dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * dim, 64 * 9, 1),
        )
        self.flow_head = nn.Sequential(
            nn.Conv2d(dim, 2 * dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * dim, 6, 3, padding=1),
        )
        if config.iters > 0:
            self.fnet = ResNetFPN(config, input_dim=3, output_dim=2 * dim)
            self.update_block = BasicUpdateBlock(config, hdim=dim, cdim=dim)

    @staticmethod
    def upsample_data(
        flow: torch.Tensor, info: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convex 3×3 upsampling ×8: flow [B,2,h,w] (scaled ×8), info [B,C,h,w], mask [B,576,h,w]."""
        batch, channels, height, width = info.shape
        weights = torch.softmax(mask.view(batch, 1, 9, 8, 8, height, width), dim=2)

        def upsample(x: torch.Tensor) -> torch.Tensor:
            c = x.shape[1]
            patches = F.unfold(x, (3, 3), padding=1).view(batch, c, 9, 1, 1, height, width)
            up = torch.sum(weights * patches, dim=2).permute(0, 1, 4, 2, 5, 3)
            return up.reshape(batch, c, 8 * height, 8 * width)

        return upsample(8 * flow), upsample(info)

    def forward(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        iters: int | None = None,
        flow_gt: torch.Tensor | None = None,
        test_mode: bool = False,
    ) -> dict[str, Any]:
        if iters is None:
            iters = self.config.iters
        if iters > 0 and self.config.iters == 0:
            raise ValueError("a config with iters = 0 has no refinement network; pass iters=0")
        batch, _, height, width = image1.shape
        dim = self.config.dim
        padding = _pad_to_multiple_of_8(height, width)
        image1 = F.pad(2 * (image1 / 255.0) - 1.0, padding, mode="replicate").contiguous()
        image2 = F.pad(2 * (image2 / 255.0) - 1.0, padding, mode="replicate").contiguous()

        net, context = torch.split(
            self.init_conv(self.cnet(torch.cat([image1, image2], dim=1))), [dim, dim], dim=1
        )
        flow_update = self.flow_head(net)
        flow_8x = flow_update[:, :2]
        flows, infos = [], []
        flow_up, info_up = self.upsample_data(
            flow_8x, flow_update[:, 2:], 0.25 * self.upsample_weight(net)
        )
        flows.append(flow_up)
        infos.append(info_up)

        if iters > 0:
            fmaps = self.fnet(torch.cat([image1, image2], dim=0))
            corr_pyramid = CorrPyramid(fmaps[:batch], fmaps[batch:], self.config.radius)
            height_8x, width_8x = flow_8x.shape[-2:]
            grid = coords_grid(batch, height_8x, width_8x, device=image1.device)
        for _ in range(iters):
            flow_8x = flow_8x.detach()
            corr = corr_pyramid.lookup((grid + flow_8x).detach())
            net = self.update_block(net, context, corr, flow_8x)
            flow_update = self.flow_head(net)
            flow_8x = flow_8x + flow_update[:, :2]
            flow_up, info_up = self.upsample_data(
                flow_8x, flow_update[:, 2:], 0.25 * self.upsample_weight(net)
            )
            flows.append(flow_up)
            infos.append(info_up)

        left, _, top, _ = padding
        flows = [f[..., top : top + height, left : left + width] for f in flows]
        infos = [i[..., top : top + height, left : left + width] for i in infos]
        if test_mode:
            return {"final": flows[-1], "flow": flows, "info": infos, "nf": None}
        if flow_gt is None:
            flow_gt = torch.zeros_like(flows[-1])
        nf = [
            self._mixture_laplace_loss(flow, info, flow_gt)
            for flow, info in zip(flows, infos, strict=True)
        ]
        return {"final": flows[-1], "flow": flows, "info": infos, "nf": nf}

    def _mixture_laplace_loss(
        self, flow: torch.Tensor, info: torch.Tensor, flow_gt: torch.Tensor
    ) -> torch.Tensor:
        """Negative log-likelihood [B,2,H,W] of flow_gt under the predicted 2-component Laplace
        mixture (large-scale component log b in [0, var_max], small in [var_min, 0])."""
        var_max, var_min = (
            (self.config.var_max, self.config.var_min) if self.config.use_var else (0, 0)
        )
        weight = info[:, :2]
        log_b = torch.stack([info[:, 2].clamp(0, var_max), info[:, 3].clamp(var_min, 0)], dim=1)
        term2 = (flow_gt - flow).abs().unsqueeze(2) * torch.exp(-log_b).unsqueeze(1)
        term1 = weight - math.log(2) - log_b
        return torch.logsumexp(weight, dim=1, keepdim=True) - torch.logsumexp(
            term1.unsqueeze(1) - term2, dim=2
        )


def _shared_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: stored name} for state-dict entries sharing one tensor; the stored name is the
    alphabetically first, as `safetensors.torch.save_model` keeps it."""
    groups: dict[tuple[int, torch.dtype, tuple[int, ...]], list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.numel() == 0:
            continue
        groups.setdefault((tensor.data_ptr(), tensor.dtype, tuple(tensor.shape)), []).append(name)
    aliases = {}
    for names in groups.values():
        stored, *others = sorted(names)
        aliases.update(dict.fromkeys(others, stored))
    return aliases


def checkpoint_layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors an official-layout safetensors file holds for `model`."""
    aliases = _shared_aliases(model)
    return {
        name: tuple(tensor.shape)
        for name, tensor in model.state_dict().items()
        if name not in aliases
    }


def _read_safetensors(path: Path, uri: str) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = list(f.keys())
            return {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{uri!r} is not a readable safetensors file: {e}") from e


def load_sea_raft(
    uri: str = DEFAULT_URI, config: SEARAFTConfig | Mapping[str, Any] | None = None
) -> SEARAFT:
    """SEA-RAFT in eval mode with the official weights at `uri` (any fsspec URI, safetensors).

    Raises CheckpointError naming missing/unexpected keys or mismatched shapes when the file is
    not a checkpoint of this architecture (default config: spring-M).
    """
    model = SEARAFT(SPRING_M_CONFIG if config is None else config)
    tensors = _read_safetensors(cached_path(uri), uri)
    aliases = _shared_aliases(model)
    for alias, stored in aliases.items():
        if alias in tensors and stored not in tensors:
            tensors[stored] = tensors.pop(alias)
        elif alias in tensors:
            del tensors[alias]
    expected = checkpoint_layout(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = [
        f"{name}: file {tuple(tensors[name].shape)} vs model {shape}"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong_shape),
        ):
            if items:
                shown = ", ".join(items[:5]) + (" ..." if len(items) > 5 else "")
                problems.append(f"{len(items)} {label} ({shown})")
        raise CheckpointError(
            f"{uri!r} is not a SEA-RAFT checkpoint for this config: " + "; ".join(problems)
        )
    for alias, stored in aliases.items():
        tensors[alias] = tensors[stored]
    model.load_state_dict(tensors, strict=True)
    return model.eval()
