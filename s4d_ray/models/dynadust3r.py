"""DynaDUSt3R (Stereo4D): DUSt3R plus time-conditioned 3D motion heads, in PyTorch.

Given two frames of one video, view 1 at time t1 and view 2 at time t2 > t1, and a normalised
query time t in [0, 1] (0 = t1, 1 = t2), the model predicts

* both views' pointmaps in view 1's camera (exactly DUSt3R: `pts3d` [B,H,W,3] for view 1,
  `pts3d_in_other_view` [B,H,W,3] for view 2, each with `conf` [B,H,W] >= 1), and
* per pixel of each view, the 3D displacement (`motion` [B,H,W,3], view 1's camera, same units
  as the pointmaps) that carries the pixel's point from its own frame's time to time t, with
  `motion_conf` [B,H,W] >= 1. `pts3d + motion` is that point at time t.

The DUSt3R part mirrors `AsymmetricCroCo3DStereo` of naver/dust3r as loaded by its
`load_model` (patch embed `PatchEmbedDust3R`, `landscape_only=False`): a ViT encoder shared by
both images, two cross-attending ViT decoders, 2D RoPE on patch rows/columns, and one DPT head
per view fed by the encoder output and decoder blocks L/2, 3L/4 and L. Module and parameter
names equal the official ones, so the official state dict loads strictly; `mask_token` (a
CroCo pre-training parameter) is kept, unused, for that reason.

Motion heads (one per view) follow the unofficial PyTorch re-implementation
(KevinMathewT/dynadust3r-unofficial), the paper giving no more detail: a DPT head identical to
the pointmap head (3 motion + 1 confidence channels, the pointmap head's `exp` output
transforms), conditioned on t by a 128-d sinusoidal embedding ([cos | sin], frequencies
10000^(-i/64), i = 0..63, applied to t in [0, 1]) passed through one small MLP per DPT level
(Linear -> SiLU -> Linear to the DPT feature width) whose output is added, as a per-channel
bias, to that level's features right after the `scratch.layer_rn` projection. When built from
an official DUSt3R checkpoint, each motion head's DPT weights are copied from the same view's
pointmap head (all shapes match) and the time MLPs get PyTorch's default initialisation under a
fixed seed, so loading is deterministic.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4d_ray.io import fs
from s4d_ray.models.weights import CheckpointError, load_torch_checkpoint

DEFAULT_URI = (
    "https://download.europe.naverlabs.com/ComputerVision/DUSt3R/"
    "DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth"
)

_INF = float("inf")
_LAYER_NORM_EPS = 1e-6
_MOTION_HEAD_PREFIXES = ("motion_head1.", "motion_head2.")


SIZE_LIMITS = {
    "patch_size": (1, 64),
    "enc_embed_dim": (8, 8192),
    "enc_depth": (1, 128),
    "enc_num_heads": (1, 256),
    "dec_embed_dim": (8, 8192),
    "dec_depth": (1, 128),
    "dec_num_heads": (1, 256),
    "dpt_feature_dim": (1, 8192),
    "dpt_last_dim": (1, 8192),
    "time_embed_dim": (2, 8192),
}
"""Bounds on every size of a DynaDUSt3R config, checked before a model is built (DUSt3R
ViT-L/ViT-B: widths 1024/768, depths 24/12), so a checkpoint whose args describe a
10,000-layer encoder is refused at once instead of being built."""


@dataclass(frozen=True)
class DynaDUSt3RConfig:
    """Sizes and output transforms; the defaults are DUSt3R_ViTLarge_BaseDecoder_512_dpt.

    `depth_mode` = (kind, min, max) maps raw head outputs to points ('exp', 'square' or 'linear',
    unbounded only, as DUSt3R allows); `conf_mode` = ('exp' | 'sigmoid', min, max) maps them to
    confidences. DPT widths are not configurable in DUSt3R's args; they stay settable here so
    tests can build tiny models.
    """

    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_freq: float = 100.0
    norm_memory: bool = True
    depth_mode: tuple[str, float, float] = ("exp", -_INF, _INF)
    conf_mode: tuple[str, float, float] = ("exp", 1.0, _INF)
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    time_embed_dim: int = 128

    def __post_init__(self) -> None:
        # bounds first, before anything is sized from them (a checkpoint's args may be hostile)
        for name, (low, high) in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not all(
            isinstance(d, int) and 1 <= d <= SIZE_LIMITS["dec_embed_dim"][1]
            for d in self.dpt_layer_dims
        ):
            raise ValueError(f"dpt_layer_dims must be 4 sizes in [1, 8192]: {self.dpt_layer_dims}")
        if not 0 < self.mlp_ratio <= 16:
            raise ValueError(f"mlp_ratio must be in (0, 16], got {self.mlp_ratio!r}")
        if self.depth_mode[0] not in ("exp", "square", "linear") or self.depth_mode[1:] != (
            -_INF,
            _INF,
        ):
            raise ValueError(f"unsupported depth_mode {self.depth_mode!r}")
        if self.conf_mode[0] not in ("exp", "sigmoid"):
            raise ValueError(f"unsupported conf_mode {self.conf_mode!r}")
        # NaN or infinite transforms make every prediction NaN (exit 0): refused at load
        if not (
            isinstance(self.rope_freq, (int, float))
            and not isinstance(self.rope_freq, bool)
            and math.isfinite(self.rope_freq)
            and self.rope_freq > 0
        ):
            raise ValueError(
                f"pos_embed / rope_freq must be RoPE<frequency> with a finite frequency > 0, "
                f"got {self.rope_freq!r}"
            )
        conf_low, conf_high = self.conf_mode[1:]
        if not (
            math.isfinite(conf_low)
            and conf_high > conf_low
            and (math.isfinite(conf_high) or self.conf_mode[0] == "exp")
        ):
            raise ValueError(
                f"conf_mode must have a finite minimum below its maximum (which only 'exp' may "
                f"leave infinite), got {self.conf_mode!r}"
            )
        for dim, heads in (
            (self.enc_embed_dim, self.enc_num_heads),
            (self.dec_embed_dim, self.dec_num_heads),
        ):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(
                    f"width {dim} / {heads} heads must give a head size divisible by 4"
                )
        if self.dec_depth < 1 or self.time_embed_dim % 2 or len(self.dpt_layer_dims) != 4:
            raise ValueError("need dec_depth >= 1, an even time_embed_dim and 4 DPT layer dims")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (str, int, float, bool, tuple) that `torch.load(weights_only=True)` reads."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DynaDUSt3RConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)


def rope_tables(positions: Tensor, head_dim: int, freq: float) -> tuple[Tensor, Tensor]:
    """cos, sin [B,1,N,head_dim] of 2D RoPE for patch positions [B,N,2] (row, column).

    The first half of each head's channels rotates with the row index, the second half with the
    column index; within a half, channel pairs (j, j + half/2) share frequency freq^(-2j/half).
    """
    half = head_dim // 2
    inv_freq = 1.0 / (freq ** (torch.arange(0, half, 2, device=positions.device).float() / half))
    angles = positions.float()[..., None] * inv_freq  # [B,N,2,half/2]
    angles = torch.cat((angles, angles), dim=-1).flatten(-2)  # [B,N,head_dim]
    return angles.cos()[:, None], angles.sin()[:, None]


def _rotate_halves(x: Tensor) -> Tensor:
    """Per row/column half (a, b) -> (-b, a), the rotation partner of RoPE."""
    parts = x.unflatten(-1, (2, 2, -1))
    first, second = parts.unbind(-2)
    return torch.stack((-second, first), dim=-2).flatten(-3)


def _apply_rope(x: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
    cos, sin = tables
    return x * cos.to(x.dtype) + _rotate_halves(x) * sin.to(x.dtype)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(_apply_rope(q, rope), _apply_rope(k, rope), v)
        return self.proj(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        rope_x: tuple[Tensor, Tensor],
        rope_memory: tuple[Tensor, Tensor],
    ) -> Tensor:
        q = _apply_rope(self._heads(self.projq(x)), rope_x)
        k = _apply_rope(self._heads(self.projk(memory)), rope_memory)
        out = F.scaled_dot_product_attention(q, k, self._heads(self.projv(memory)))
        return self.proj(out.transpose(1, 2).flatten(2))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = _layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = _layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to the other view's tokens, MLP (all pre-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_memory: bool) -> None:
        super().__init__()
        self.norm1 = _layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = _layer_norm(dim)
        self.norm3 = _layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = _layer_norm(dim) if norm_memory else nn.Identity()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        rope_x: tuple[Tensor, Tensor],
        rope_memory: tuple[Tensor, Tensor],
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), rope_x)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(memory), rope_x, rope_memory)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B,3,H,W] -> tokens [B,N,dim] and positions [B,N,2] (row, column), row-major."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of {self.patch_size}")
        x = self.proj(images)
        rows = torch.arange(x.shape[2], device=images.device)
        cols = torch.arange(x.shape[3], device=images.device)
        positions = torch.cartesian_prod(rows, cols).expand(x.shape[0], -1, -1)
        return x.flatten(2).transpose(1, 2), positions


# ---------------------------------------------------------------------------------------------
# DPT heads
# ---------------------------------------------------------------------------------------------


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds a skip feature map, refines, upsamples x2 (bilinear, corners aligned), 1x1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTScratch(nn.Module):
    """Per-level 3x3 projections to the common width plus the four fusion blocks.

    The projections are registered both as `layer_rn.<i>` and as `layer<i+1>_rn` (the same
    modules), because the official checkpoint stores both names.
    """

    def __init__(self, layer_dims: Sequence[int], features: int) -> None:
        super().__init__()
        self.layer_rn = nn.ModuleList(
            nn.Conv2d(dim, features, 3, padding=1, bias=False) for dim in layer_dims
        )
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = self.layer_rn
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features)


class DPTDecoder(nn.Module):
    """DPT: four token maps (patch grid) -> a dense map [B,channels,H,W] at full resolution.

    Levels are resampled to 1/4, 1/8, 1/16 and 1/32 of the image size, projected to a common
    width, fused coarse to fine and upsampled twice more.
    """

    def __init__(
        self,
        hooks: Sequence[int],
        token_dims: Sequence[int],
        layer_dims: Sequence[int],
        features: int,
        last_dim: int,
        channels: int,
    ) -> None:
        super().__init__()
        self.hooks = tuple(hooks)
        d0, d1, d2, d3 = layer_dims
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(token_dims[0], d0, 1), nn.ConvTranspose2d(d0, d0, 4, 4)),
                nn.Sequential(nn.Conv2d(token_dims[1], d1, 1), nn.ConvTranspose2d(d1, d1, 2, 2)),
                nn.Sequential(nn.Conv2d(token_dims[2], d2, 1)),
                nn.Sequential(
                    nn.Conv2d(token_dims[3], d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)
                ),
            ]
        )
        self.scratch = DPTScratch(layer_dims, features)
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, channels, 1),
        )

    def forward(
        self,
        tokens: Sequence[Tensor],
        grid_hw: tuple[int, int],
        level_bias: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """tokens: all layers [B,N,C_l]; grid_hw: patch grid; level_bias: 4 x [B,features]."""
        levels = []
        for level, (hook, resample, project) in enumerate(
            zip(self.hooks, self.act_postprocess, self.scratch.layer_rn, strict=True)
        ):
            x = tokens[hook].transpose(1, 2).unflatten(2, grid_hw)
            x = project(resample(x))
            if level_bias is not None:
                x = x + level_bias[level][:, :, None, None]
            levels.append(x)
        path = self.scratch.refinenet4(levels[3])[..., : levels[2].shape[2], : levels[2].shape[3]]
        path = self.scratch.refinenet3(path, levels[2])
        path = self.scratch.refinenet2(path, levels[1])
        path = self.scratch.refinenet1(path, levels[0])
        return self.head(path)


def time_embedding(query_times: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding [B,dim] = [cos | sin](t * 10000^(-i/(dim/2))) of times [B] in [0,1]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=query_times.device).float() / half
    )
    angles = query_times.float()[:, None] * freqs
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class PointmapHead(nn.Module):
    """DUSt3R's DPT head: raw map [B,4,H,W] (xyz + confidence)."""

    def __init__(self, dpt_args: dict[str, Any]) -> None:
        super().__init__()
        self.dpt = DPTDecoder(**dpt_args)

    def forward(self, tokens: Sequence[Tensor], grid_hw: tuple[int, int]) -> Tensor:
        return self.dpt(tokens, grid_hw)


class MotionHead(nn.Module):
    """Pointmap-style DPT head whose per-level features get a bias from the query time."""

    def __init__(self, dpt_args: dict[str, Any], time_embed_dim: int) -> None:
        super().__init__()
        self.dpt = DPTDecoder(**dpt_args)
        features = dpt_args["features"]
        self.time_embed_dim = time_embed_dim
        self.time_mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(time_embed_dim, features), nn.SiLU(), nn.Linear(features, features)
            )
            for _ in range(4)
        )

    def forward(
        self, tokens: Sequence[Tensor], grid_hw: tuple[int, int], query_times: Tensor
    ) -> Tensor:
        embedding = time_embedding(query_times, self.time_embed_dim)
        return self.dpt(tokens, grid_hw, [mlp(embedding) for mlp in self.time_mlps])


def _points_from_raw(xyz: Tensor, mode: tuple[str, float, float]) -> Tensor:
    """DUSt3R depth_mode: keep the direction of raw xyz [...,3], remap its length."""
    if mode[0] == "linear":
        return xyz
    length = xyz.norm(dim=-1, keepdim=True)
    direction = xyz / length.clip(min=1e-8)
    if mode[0] == "square":
        return direction * length.square()
    return direction * torch.expm1(length)


def _conf_from_raw(x: Tensor, mode: tuple[str, float, float]) -> Tensor:
    kind, vmin, vmax = mode
    if kind == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    return (vmax - vmin) * torch.sigmoid(x) + vmin


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class DynaDUSt3R(nn.Module):
    """DUSt3R (ViT encoder, two cross-attending decoders, DPT pointmap heads) + motion heads."""

    dec_blocks: nn.ModuleList  # both registered by name in __init__
    dec_blocks2: nn.ModuleList

    def __init__(self, config: DynaDUSt3RConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DynaDUSt3RConfig()
        enc, dec = config.enc_embed_dim, config.dec_embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, enc)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.enc_blocks = nn.ModuleList(
            EncoderBlock(enc, config.enc_num_heads, config.mlp_ratio)
            for _ in range(config.enc_depth)
        )
        self.enc_norm = _layer_norm(enc)
        self.decoder_embed = nn.Linear(enc, dec)
        for name in ("dec_blocks", "dec_blocks2"):
            blocks = nn.ModuleList(
                DecoderBlock(dec, config.dec_num_heads, config.mlp_ratio, config.norm_memory)
                for _ in range(config.dec_depth)
            )
            self.add_module(name, blocks)
        self.dec_norm = _layer_norm(dec)

        depth = config.dec_depth
        dpt_args = dict(
            hooks=(0, depth * 2 // 4, depth * 3 // 4, depth),
            token_dims=(enc, dec, dec, dec),
            layer_dims=config.dpt_layer_dims,
            features=config.dpt_feature_dim,
            last_dim=config.dpt_last_dim,
            channels=4,
        )
        self.downstream_head1 = PointmapHead(dpt_args)
        self.downstream_head2 = PointmapHead(dpt_args)
        self.motion_head1 = MotionHead(dpt_args, config.time_embed_dim)
        self.motion_head2 = MotionHead(dpt_args, config.time_embed_dim)

    def _encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        tokens, positions = self.patch_embed(images)
        rope = rope_tables(
            positions, tokens.shape[-1] // self.config.enc_num_heads, self.config.rope_freq
        )
        for block in self.enc_blocks:
            tokens = block(tokens, rope)
        return self.enc_norm(tokens), positions

    def _decode(
        self, feat1: Tensor, pos1: Tensor, feat2: Tensor, pos2: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per view: [encoder output, decoder block 1..L outputs (last normalised)]."""
        head_dim = self.config.dec_embed_dim // self.config.dec_num_heads
        rope1 = rope_tables(pos1, head_dim, self.config.rope_freq)
        rope2 = rope_tables(pos2, head_dim, self.config.rope_freq)
        out1, out2 = [feat1], [feat2]
        x1, x2 = self.decoder_embed(feat1), self.decoder_embed(feat2)
        for block1, block2 in zip(self.dec_blocks, self.dec_blocks2, strict=True):
            x1, x2 = block1(x1, x2, rope1, rope2), block2(x2, x1, rope2, rope1)
            out1.append(x1)
            out2.append(x2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    def _dense(self, raw: Tensor, vector_key: str, conf_key: str) -> dict[str, Tensor]:
        """Raw head map [B,4,H,W] -> {vector_key: [B,H,W,3], conf_key: [B,H,W]}."""
        fmap = raw.permute(0, 2, 3, 1)
        return {
            vector_key: _points_from_raw(fmap[..., :3], self.config.depth_mode),
            conf_key: _conf_from_raw(fmap[..., 3], self.config.conf_mode),
        }

    def forward(
        self,
        view1: Mapping[str, Tensor],
        view2: Mapping[str, Tensor],
        query_times: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """DUSt3R call: views {'img': [B,3,H,W] in [-1,1], 'true_shape': [B,2] (optional)}.

        Returns (res1, res2): res1 `pts3d` [B,H,W,3], `conf` [B,H,W]; res2
        `pts3d_in_other_view` [B,H,W,3] (view 1's camera), `conf` [B,H,W]. With `query_times`
        [B] in [0,1] both also get `motion` [B,H,W,3] and `motion_conf` [B,H,W].
        """
        img1, img2 = view1["img"], view2["img"]
        grid1, grid2 = (
            _grid_hw(view1, self.config.patch_size),
            _grid_hw(view2, self.config.patch_size),
        )
        if img1.shape[-2:] == img2.shape[-2:]:
            feats, positions = self._encode(torch.cat((img1, img2)))
            (feat1, feat2), (pos1, pos2) = feats.chunk(2), positions.chunk(2)
        else:
            feat1, pos1 = self._encode(img1)
            feat2, pos2 = self._encode(img2)
        dec1, dec2 = self._decode(feat1, pos1, feat2, pos2)

        with torch.autocast(device_type=img1.device.type, enabled=False):
            dec1 = [t.float() for t in dec1]
            dec2 = [t.float() for t in dec2]
            res1 = self._dense(self.downstream_head1(dec1, grid1), "pts3d", "conf")
            res2 = self._dense(self.downstream_head2(dec2, grid2), "pts3d_in_other_view", "conf")
            if query_times is not None:
                if query_times.shape != (img1.shape[0],):
                    raise ValueError(f"query_times must be [B], got {tuple(query_times.shape)}")
                motion1 = self.motion_head1(dec1, grid1, query_times)
                motion2 = self.motion_head2(dec2, grid2, query_times)
                res1 |= self._dense(motion1, "motion", "motion_conf")
                res2 |= self._dense(motion2, "motion", "motion_conf")
        return res1, res2

    def dust3r_state_dict(self) -> dict[str, Tensor]:
        """The parameters the official DUSt3R checkpoint holds (names as there)."""
        return {
            k: v for k, v in self.state_dict().items() if not k.startswith(_MOTION_HEAD_PREFIXES)
        }

    def init_motion_heads_from_pointmap_heads(self, seed: int = 0) -> None:
        """Motion heads := copies of the same view's pointmap DPT + freshly initialised time MLPs.

        The time MLPs get PyTorch's default Linear initialisation on the CPU RNG seeded with
        `seed` + view index (global RNG state untouched). Works on a model built on the meta device whose DUSt3R part is loaded.
        """
        pairs = (
            (self.motion_head1, self.downstream_head1),
            (self.motion_head2, self.downstream_head2),
        )
        device = self.decoder_embed.weight.device
        for index, (motion, pointmap) in enumerate(pairs):
            copies = {k: v.detach().clone() for k, v in pointmap.dpt.state_dict().items()}
            motion.dpt.load_state_dict(copies, assign=True)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + index)
                motion.time_mlps.to_empty(device="cpu")
                for layer in motion.time_mlps.modules():
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()
            motion.time_mlps.to(device)


def _grid_hw(view: Mapping[str, Tensor], patch_size: int) -> tuple[int, int]:
    """Patch grid of a view's image; `true_shape`, when given, must equal the image size."""
    height, width = view["img"].shape[-2:]
    true_shape = view.get("true_shape")
    if true_shape is not None:
        expected = torch.tensor([height, width], device=true_shape.device)
        if not bool((true_shape.reshape(-1, 2) == expected).all()):
            raise ValueError(
                f"true_shape {true_shape.tolist()} differs from image {height}x{width}"
            )
    return height // patch_size, width // patch_size


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

# AsymmetricCroCo3DStereo / CroCoNet constructor defaults, for arguments an args string omits.
_DUST3R_DEFAULTS: dict[str, Any] = {
    "patch_size": 16,
    "enc_embed_dim": 768,
    "enc_depth": 12,
    "enc_num_heads": 12,
    "dec_embed_dim": 512,
    "dec_depth": 8,
    "dec_num_heads": 16,
    "mlp_ratio": 4,
    "norm_im2_in_dec": True,
    "pos_embed": "cosine",
    "head_type": "linear",
    "output_mode": "pts3d",
    "depth_mode": ("exp", -_INF, _INF),
    "conf_mode": ("exp", 1, _INF),
    "patch_embed_cls": "PatchEmbedDust3R",
}
# Arguments that do not change the inference network (training resolution, freezing, masking).
_DUST3R_IGNORED = {"img_size", "landscape_only", "freeze", "mask_ratio"}


def _literal(node: ast.expr) -> Any:
    """Value of a literal expression node; also accepts `inf` and `-inf` (DUSt3R's modes)."""
    if isinstance(node, ast.Constant) and (
        node.value is None or isinstance(node.value, (str, int, float, bool))
    ):
        return node.value
    if isinstance(node, ast.Name) and node.id == "inf":
        return _INF
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(element) for element in node.elts)
    raise ValueError(f"not a literal: {ast.dump(node)}")


def _mode(value: Any) -> tuple[str, float, float]:
    """(kind, min, max) of a DUSt3R depth/conf mode; the config refuses a wrong length."""
    return cast(tuple[str, float, float], (str(value[0]), *map(float, value[1:])))


def config_from_dust3r_args(model_args: str) -> DynaDUSt3RConfig:
    """Parse DUSt3R's `args.model` constructor string without evaluating it.

    E.g. "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed',
    img_size=(512, 512), head_type='dpt', ..., dec_num_heads=12)". Only DPT pointmap models with
    RoPE are supported; ManyAR_PatchEmbed is treated as PatchEmbedDust3R, as DUSt3R's own
    `load_model` does.
    """
    try:
        call = ast.parse(model_args.strip(), mode="eval").body
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "AsymmetricCroCo3DStereo"
            and not call.args
        ):
            raise ValueError("expected AsymmetricCroCo3DStereo(keyword=literal, ...)")
        pairs = [(kw.arg, _literal(kw.value)) for kw in call.keywords]
        if any(name is None for name, _ in pairs):
            raise ValueError("**kwargs are not supported")
        given = {name: value for name, value in pairs if name is not None}
        unknown = set(given) - set(_DUST3R_DEFAULTS) - _DUST3R_IGNORED
        if unknown:
            raise ValueError(f"unknown arguments {sorted(unknown)}")
        args = _DUST3R_DEFAULTS | given
        if args["head_type"] != "dpt" or args["output_mode"] != "pts3d":
            raise ValueError(
                f"need head_type='dpt', output_mode='pts3d', got {args['head_type']!r}"
            )
        if args["patch_embed_cls"] not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            raise ValueError(f"unknown patch_embed_cls {args['patch_embed_cls']!r}")
        if not str(args["pos_embed"]).startswith("RoPE"):
            raise ValueError(
                f"only RoPE position embeddings are supported, not {args['pos_embed']!r}"
            )
        if args["conf_mode"] is None:
            raise ValueError("models without confidence output are not supported")
        return DynaDUSt3RConfig(
            patch_size=int(args["patch_size"]),
            enc_embed_dim=int(args["enc_embed_dim"]),
            enc_depth=int(args["enc_depth"]),
            enc_num_heads=int(args["enc_num_heads"]),
            dec_embed_dim=int(args["dec_embed_dim"]),
            dec_depth=int(args["dec_depth"]),
            dec_num_heads=int(args["dec_num_heads"]),
            mlp_ratio=float(args["mlp_ratio"]),
            rope_freq=float(args["pos_embed"][len("RoPE") :]),
            norm_memory=bool(args["norm_im2_in_dec"]),
            depth_mode=_mode(args["depth_mode"]),
            conf_mode=_mode(args["conf_mode"]),
        )
    except (SyntaxError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"cannot use DUSt3R model args {model_args!r}: {e}") from e


def _read_checkpoint(uri: str) -> dict[str, Any]:
    checkpoint = load_torch_checkpoint(
        uri, safe_globals=[argparse.Namespace], what="DUSt3R/DynaDUSt3R checkpoint"
    )
    if not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("model"), dict)
        and all(isinstance(v, Tensor) for v in checkpoint["model"].values())
        and "args" in checkpoint
    ):
        raise CheckpointError(f"{uri!r} is not a dict with 'args' and a 'model' state dict")
    checkpoint["model"] = {
        k: v.float() if v.is_floating_point() else v for k, v in checkpoint["model"].items()
    }
    return checkpoint


def _load_weights(model: DynaDUSt3R, weights: Mapping[str, Tensor], uri: str, dust3r: bool) -> None:
    """Strict load into a meta-device model, taking over the tensors: all of the model (own
    checkpoints) or all of its DUSt3R part (official)."""
    expected = set(model.dust3r_state_dict() if dust3r else model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{uri!r} does not match the model described by its args: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    try:
        model.load_state_dict(weights, strict=not dust3r, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{uri!r} has parameters of the wrong shape: {e}") from e


def load_dust3r(uri: str = DEFAULT_URI) -> DynaDUSt3R:
    """DynaDUSt3R in eval mode, on CPU, from an official DUSt3R file or one of ours.

    Official (`args` an argparse.Namespace whose `.model` is the constructor string): the
    DUSt3R weights load strictly and the motion heads start from the pointmap heads (see the
    module docstring). Ours (`args` a plain config dict, written by `save_dynadust3r`):
    everything loads strictly.
    """
    checkpoint = _read_checkpoint(uri)
    args = checkpoint["args"]
    if isinstance(args, argparse.Namespace):
        if not isinstance(getattr(args, "model", None), str):
            raise CheckpointError(f"{uri!r}: args has no model constructor string")
        try:
            config, dust3r = config_from_dust3r_args(args.model), True
        except CheckpointError as e:
            raise CheckpointError(f"{uri!r}: {e}") from e
    elif isinstance(args, dict):
        try:
            config, dust3r = DynaDUSt3RConfig.from_dict(args), False
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{uri!r}: bad DynaDUSt3R config: {e}") from e
    else:
        raise CheckpointError(f"{uri!r}: args is a {type(args).__name__}, not Namespace or dict")

    with torch.device("meta"):
        model = DynaDUSt3R(config)
    _load_weights(model, checkpoint["model"], uri, dust3r)
    if dust3r:
        model.init_motion_heads_from_pointmap_heads()
    return model.eval()


def save_dynadust3r(model: DynaDUSt3R, uri: str, epoch: int = 0) -> None:
    """Write {'args': config dict, 'model': state dict, 'epoch'} to any fsspec URI, atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with fs.open_atomic(uri, "wb") as f:
        torch.save({"args": model.config.to_dict(), "model": state, "epoch": int(epoch)}, f)
