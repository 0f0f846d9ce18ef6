"""BootsTAP point tracker: TAPIR (Doersch et al. 2023) in PyTorch.

Loads the official `bootstapir_checkpoint_v2.pt` state dict unchanged (module names mirror
tapnet's torch port). Stereo4D runs BootsTAP at 512x512 with `pyramid_level=1, extra_convs=True,
softmax_temperature=10`; those are the defaults here.

Pipeline per video: a ResNet turns every frame into a 256-channel grid at 1/8 resolution
("lowres", refined by 5 extra conv blocks) and a 128-channel grid at 1/4 ("hires"), both
L2-normalised, at the 256x256 training resolution and at each refinement resolution (512x512
for a 512 video). Per query: a cost volume against the lowres grid gives initial tracks
(soft-argmax) and occlusion / uncertainty logits; then `num_pips_iter` PIPs-style MLP-mixer
updates per refinement resolution, each from 7x7 local correlations on the hires, lowres and
pooled-lowres grids. Final outputs average the last iterate of every refinement resolution.

Coordinates: query points are (t, y, x) and tracks (x, y) in input pixels, with pixel centres
at +0.5 (pixel i spans [i, i+1)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from s4d_ray.models.weights import CheckpointError, load_torch_checkpoint

DEFAULT_URI = "https://storage.googleapis.com/dm-tapnet/bootstap/bootstapir_checkpoint_v2.pt"

_HIRES_DIM = 128
_LOWRES_DIM = 256
_PATCH_RADIUS = 3  # 7x7 correlation patches in refinement
_SOFT_ARGMAX_RADIUS = 5.0  # grid cells around the heatmap peak that the soft-argmax averages


class FeatureGrids(NamedTuple):
    """Per-frame features of one video, reusable across any number of query chunks.

    lowres[i]: [B,T,h,w,256] and hires[i]: [B,T,2h,2w,128] (unit-norm channels) for
    resolutions[i] (H,W); entry 0 is the initial (training) resolution, the rest refinement
    resolutions. video_hw: (H,W) of the input video, the pixel frame of queries and tracks.
    """

    lowres: tuple[torch.Tensor, ...]
    hires: tuple[torch.Tensor, ...]
    resolutions: tuple[tuple[int, int], ...]
    video_hw: tuple[int, int]

    def cast(self, dtype: torch.dtype) -> FeatureGrids:
        """The grids in `dtype`, cast once per clip (e.g. bf16 under bf16 autocast: half the
        bytes every refinement pass reads, and no per-call cast of whole grids)."""
        return self._replace(
            lowres=tuple(g.to(dtype) for g in self.lowres),
            hires=tuple(g.to(dtype) for g in self.hires),
        )


def _hw(size: Sequence[int]) -> tuple[int, int]:
    """(H, W) as a tuple, from any 2-sequence (a list read from a config, a tuple)."""
    h, w = size
    return h, w


def default_refinement_resolutions(
    video_hw: tuple[int, int], initial_hw: tuple[int, int]
) -> list[tuple[int, int]]:
    """Log-spaced (H,W) sizes from `initial_hw` up to `video_hw`, multiples of 8 (tapnet's rule).

    A video no larger than the training size refines at the training size only; 512x512 with a
    256 training size gives [(256,256), (512,512)].
    """
    if tuple(video_hw) == tuple(initial_hw):
        return [_hw(initial_hw)]
    ratio = max(v / i for v, i in zip(video_hw, initial_hw, strict=True))
    num_levels = math.ceil(math.log2(ratio)) + 1
    if num_levels <= 1:
        return [_hw(initial_hw)]
    return [
        _hw(
            [
                int(i * (v / i) ** (level / (num_levels - 1)) // 8) * 8
                for v, i in zip(video_hw, initial_hw, strict=True)
            ]
        )
        for level in range(num_levels)
    ]


def visible_from_logits(occlusion: torch.Tensor, expected_dist: torch.Tensor) -> torch.Tensor:
    """Visibility [B,N,T] bool: (1 - sigmoid(occ)) * (1 - sigmoid(expected_dist)) > 0.5."""
    return (1 - torch.sigmoid(occlusion)) * (1 - torch.sigmoid(expected_dist)) > 0.5


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.square().sum(-1, keepdim=True).clamp_min(1e-12).sqrt()


def _sample_frames(grid: torch.Tensor, points_tyx: torch.Tensor) -> torch.Tensor:
    """Trilinear features [B,N,C] of grid [B,T,h,w,C] at points [B,N,3] (t,y,x) in grid cells.

    Frame t is taken at its centre (t+0.5); out-of-range points clamp to the border.
    """
    size = torch.tensor(grid.shape[1:4], device=grid.device, dtype=points_tyx.dtype)
    centred = points_tyx + torch.tensor([0.5, 0.0, 0.0], device=grid.device)
    normalized = (2 * centred / size - 1).flip(-1)[:, :, None, None, :]  # (x,y,t) in [-1,1]
    sampled = F.grid_sample(
        grid.permute(0, 4, 1, 2, 3), normalized, align_corners=False, padding_mode="border"
    )
    return sampled[..., 0, 0].transpose(1, 2)


def _sample_patches(grid: torch.Tensor, coords_yx: torch.Tensor) -> torch.Tensor:
    """Bilinear features [B,N,T,S,C] of grid [B,T,h,w,C] at coords [B,N,T,S,2] (y,x) in grid
    cells; zero outside the grid."""
    b, t, h, w, c = grid.shape
    _, n, _, s, _ = coords_yx.shape
    size = torch.tensor([h, w], device=grid.device, dtype=coords_yx.dtype)
    normalized = (2 * coords_yx / size - 1).flip(-1).transpose(1, 2).reshape(b * t, n, s, 2)
    sampled = F.grid_sample(
        grid.reshape(b * t, h, w, c).permute(0, 3, 1, 2), normalized, align_corners=False
    )
    return sampled.permute(0, 2, 3, 1).reshape(b, t, n, s, c).transpose(1, 2)


def _window_correlation(
    grid: torch.Tensor, coords_yx: torch.Tensor, feats: torch.Tensor, radius: int = _PATCH_RADIUS
) -> torch.Tensor:
    """Correlations [B,N,T,(2r+1)^2] of feats [B,N,T,C] with grid [B,T,h,w,C] bilinearly
    sampled at coords [B,N,T,2] (y,x) grid cells + every integer offset in [-r, r]^2 (y-major);
    zero outside the grid. Equals `einsum(_sample_patches(grid, coords + offsets), feats)`.

    All offsets share the fractional part of the position, so each correlation is the same
    bilinear blend of the (2r+2)^2 integer-cell correlations around it: the features are
    dotted once per cell (64 reads of C values instead of 49 x 4), and no [B,N,T,49,C]
    patch tensor is made.
    """
    b, t, h, w, c = grid.shape
    n = coords_yx.shape[1]
    size = 2 * radius + 2
    position = coords_yx - 0.5  # grid_sample(align_corners=False): cell i is centred at i + 0.5
    base = position.floor()
    frac = (position - base).to(feats.dtype)
    steps = torch.arange(-radius, radius + 2, device=grid.device)
    rows = base[..., 0, None].long() + steps  # [B,N,T,8]
    cols = base[..., 1, None].long() + steps
    inside = ((rows >= 0) & (rows < h))[..., :, None] & ((cols >= 0) & (cols < w))[..., None, :]
    cell = rows.clamp(0, h - 1)[..., :, None] * w + cols.clamp(0, w - 1)[..., None, :]
    frame = torch.arange(b * t, device=grid.device).view(b, 1, t, 1, 1)  # (batch, frame) row
    cells = grid.reshape(b * t * h * w, c).index_select(0, (frame * (h * w) + cell).flatten())
    cells = cells.view(b * n * t, size * size, c).to(feats.dtype)
    dots = torch.bmm(cells, feats.reshape(b * n * t, c, 1)).view(b, n, t, size * size)
    dots = (dots * inside.flatten(-2)).view(b, n, t, size, size)
    fy, fx = frac[..., 0, None, None], frac[..., 1, None, None]
    top = dots[..., :-1, :-1] + fx * (dots[..., :-1, 1:] - dots[..., :-1, :-1])
    bottom = dots[..., 1:, :-1] + fx * (dots[..., 1:, 1:] - dots[..., 1:, :-1])
    return (top + fy * (bottom - top)).flatten(-2)


class _ResBlock(nn.Module):
    """Pre-activation (v2) residual block with instance norm; 'SAME'-style padding as in JAX."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, projection: bool):
        super().__init__()
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 2, 0, 2)
        if projection:
            self.proj_conv = nn.Conv2d(channels_in, channels_out, 1, stride, bias=False)
        self.bn_0 = nn.InstanceNorm2d(channels_in, affine=True)
        self.conv_0 = nn.Conv2d(channels_in, channels_out, 3, stride, bias=False)
        self.conv_1 = nn.Conv2d(channels_out, channels_out, 3, 1, padding=1, bias=False)
        self.bn_1 = nn.InstanceNorm2d(channels_out, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn_0(x))
        shortcut = self.proj_conv(pre) if hasattr(self, "proj_conv") else x
        out = self.conv_0(F.pad(pre, self.pad))
        return self.conv_1(torch.relu(self.bn_1(out))) + shortcut


class _ResNet(nn.Module):
    """Frame encoder: [M,3,H,W] in [-1,1] -> (hires [M,128,H/4,W/4], lowres [M,256,H/8,W/8])."""

    def __init__(self):
        super().__init__()
        self.initial_conv = nn.Conv2d(3, 64, 7, 2, bias=False)
        channels, strides = (64, _HIRES_DIM, 256, _LOWRES_DIM), (1, 2, 2, 1)
        self.block_groups = nn.ModuleList(
            nn.ModuleDict(
                {
                    "blocks": nn.ModuleList(
                        [
                            _ResBlock(c_in, c_out, stride, projection=True),
                            _ResBlock(c_out, c_out, 1, projection=False),
                        ]
                    )
                }
            )
            for c_in, c_out, stride in zip((64, *channels[:-1]), channels, strides, strict=True)
        )

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.initial_conv(F.pad(frames, (2, 4, 2, 4)))
        units = []
        for group in self.block_groups:  # ModuleDicts holding a ModuleList "blocks"
            for block in cast(nn.ModuleList, cast(nn.ModuleDict, group)["blocks"]):
                x = block(x)
            units.append(x)
        return units[1], units[3]


class _ExtraConvBlock(nn.Module):
    """Channels-last [M,h,w,C]: LN(x) + conv(gelu(conv(LN(x)))) (the residual is the normed x)."""

    def __init__(self, channels: int = _LOWRES_DIM, multiplier: int = 4):
        super().__init__()
        self.layer_norm = nn.LayerNorm(channels)
        self.conv = nn.Conv2d(channels, channels * multiplier, 3, padding=1)
        self.conv_1 = nn.Conv2d(channels * multiplier, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x).permute(0, 3, 1, 2)
        x = x + self.conv_1(F.gelu(self.conv(x), approximate="tanh"))
        return x.permute(0, 2, 3, 1)


class _ExtraConvs(nn.Module):
    def __init__(self, num_blocks: int = 5):
        super().__init__()
        self.blocks = nn.ModuleList(_ExtraConvBlock() for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _ChannelMLP(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.mlp2_up = nn.Linear(channels, channels * 4)
        self.mlp2_down = nn.Linear(channels * 4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp2_down(F.gelu(self.mlp2_up(x), approximate="tanh"))


class _MixerBlock(nn.Module):
    """[M,T,C] -> [M,T,C]: depthwise temporal convs (x4 channels, summed back), then channel MLP."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        self.layer_norm = nn.LayerNorm(channels, bias=False)
        self.mlp1_up = nn.Conv1d(channels, channels * 4, kernel, padding=1, groups=channels)
        self.mlp1_up_1 = nn.Conv1d(
            channels * 4, channels * 4, kernel, padding=1, groups=channels * 4
        )
        self.layer_norm_1 = nn.LayerNorm(channels, bias=False)
        self.conv_channels_mixer = _ChannelMLP(channels)

    def forward(self, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
        """x [M,T,C]. `fused`: temporal convs as channel-last shifted multiply-adds
        (`_temporal_conv`) and the channel MLP by `_linear`; False: grouped `Conv1d`s on
        transposed copies and `nn.Linear` (the plain path, same parameters)."""
        if not fused:
            y = self.layer_norm(x).transpose(1, 2)
            y = self.mlp1_up_1(F.gelu(self.mlp1_up(y), approximate="tanh"))
            x = x + y.unflatten(1, (x.shape[-1], 4)).sum(2).transpose(1, 2)
            return x + self.conv_channels_mixer(self.layer_norm_1(x))
        c = x.shape[-1]
        y = self.layer_norm(x)[..., None, :]  # [M,T,1,C]: group c feeds output channels 4c..4c+3
        y = _temporal_conv(y, *_group_major(self.mlp1_up, c))
        y = F.gelu(y, approximate="tanh")
        y = _temporal_conv(y, *_group_major(self.mlp1_up_1, c))
        x = x + y.sum(-2)
        mlp = self.conv_channels_mixer
        hidden = _linear(self.layer_norm_1(x), mlp.mlp2_up, gelu=True)
        return x + _linear(hidden, mlp.mlp2_down)


def _linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """`layer(x)`, then tanh-approximate GELU if `gelu`. For fp32 CPU inference it runs as
    oneDNN's linear with the GELU fused (`mkldnn._linear_pointwise`, the kernel PyTorch's
    inductor emits for CPU linears): ~2x MKL's sgemm behind `F.linear` on this AVX-512 CPU,
    fp32 throughout (~1e-6 relative from MKL's result). Elsewhere (GPU, bf16, autograd): plain
    `F.linear`."""
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
    ):
        activation, algorithm = ("gelu", "tanh") if gelu else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(
            x, layer.weight, layer.bias, activation, [], algorithm
        )
    y = F.linear(x, layer.weight, layer.bias)
    return F.gelu(y, approximate="tanh") if gelu else y


def _group_major(conv: nn.Conv1d, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A depthwise `Conv1d` with 4 outputs per input channel (output 4c+g) as per-tap weights
    [3,4,C] and bias [4,C]: group-major, so every tap is a contiguous multiply over channels."""
    weight = conv.weight.view(channels, 4, 3).permute(2, 1, 0).contiguous()
    assert conv.bias is not None  # the mlp1 convs are built with a bias
    return weight, conv.bias.view(channels, 4).t().contiguous()


def _temporal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise 3-tap convolution over time, zero padded, channels last.

    x [M,T,G,C] (G = 1 broadcasts to 4), weight [3,4,C], bias [4,C] -> [M,T,4,C]:
    out[t] = w0 * x[t-1] + w1 * x[t] + w2 * x[t+1] + b, as `Conv1d(padding=1, groups=...)`;
    the shifted taps accumulate in place (no temporaries).
    """
    out = torch.addcmul(bias, x, weight[1])
    out[:, 1:].addcmul_(x[:, :-1], weight[0])
    out[:, :-1].addcmul_(x[:, 1:], weight[2])
    return out


class _Mixer(nn.Module):
    """PIPs MLP-mixer over a track's frames: [M,T,in] -> [M,T,out]."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 512, blocks: int = 12):
        super().__init__()
        self.linear = nn.Linear(in_channels, hidden)
        self.blocks = nn.ModuleList(_MixerBlock(hidden) for _ in range(blocks))
        self.layer_norm = nn.LayerNorm(hidden, bias=False)
        self.linear_1 = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
        """`fused`: linears by `_linear` and fused blocks; False: the plain formulation."""
        x = _linear(x, self.linear) if fused else self.linear(x)
        for block in self.blocks:
            x = block(x, fused)
        x = self.layer_norm(x)
        return _linear(x, self.linear_1) if fused else self.linear_1(x)


class TAPIR(nn.Module):
    """TAPIR / BootsTAP tracker; state dict identical to tapnet's torch `TAPIR`.

    pyramid_level: extra 2x-pooled lowres levels in refinement correlations.
    softmax_temperature: sharpness of the initial cost-volume heatmap.
    num_pips_iter: refinement iterations per refinement resolution.
    initial_resolution: (H,W) the video is resized to for initial tracking (training size).
    feature_extractor_chunk_size: frames encoded at once (memory bound, no effect on results).

    `fused_refinement` (attribute, default True): refinement correlations by
    `_window_correlation`, mixer temporal convs by `_temporal_conv` (no 7x7 patch tensors,
    no transposed copies, no grouped convolutions) and mixer linears by `_linear` (oneDNN with
    the GELU fused, for fp32 CPU inference); `set_fused_refinement(False)` runs the plain
    formulation. Same parameters; outputs agree to float rounding (~1e-6 relative).
    """

    fused_refinement: bool = True

    def set_fused_refinement(self, fused: bool) -> TAPIR:
        """Choose the fused (default) or the plain refinement; returns self."""
        self.fused_refinement = fused
        return self

    def __init__(
        self,
        pyramid_level: int = 1,
        extra_convs: bool = True,
        softmax_temperature: float = 10.0,
        num_pips_iter: int = 4,
        initial_resolution: tuple[int, int] = (256, 256),
        feature_extractor_chunk_size: int = 10,
    ):
        super().__init__()
        self.pyramid_level = pyramid_level
        self.softmax_temperature = softmax_temperature
        self.num_pips_iter = num_pips_iter
        self.initial_resolution = _hw(initial_resolution)
        self.feature_extractor_chunk_size = feature_extractor_chunk_size
        self.resnet_torch = _ResNet()
        self.torch_cost_volume_track_mods = nn.ModuleDict(
            {
                "hid1": nn.Conv2d(1, 16, 3, 1, 1),
                "hid2": nn.Conv2d(16, 1, 3, 1, 1),
                "hid3": nn.Conv2d(16, 32, 3, 2, 0),
                "hid4": nn.Linear(32, 16),
                "occ_out": nn.Linear(16, 2),
            }
        )
        state_dim = 4 + _HIRES_DIM + _LOWRES_DIM  # dx, dy, occ, expd + track features
        corr_dim = (pyramid_level + 2) * (2 * _PATCH_RADIUS + 1) ** 2
        self.torch_pips_mixer = _Mixer(state_dim + corr_dim, state_dim)
        self.extra_convs = _ExtraConvs() if extra_convs else None

    def forward(
        self,
        video: torch.Tensor,
        query_points: torch.Tensor,
        is_training: bool = False,
        query_chunk_size: int = 64,
        refinement_resolutions: list[tuple[int, int]] | None = None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Tracks query points through a video (tapnet's call signature).

        video [B,T,H,W,3] float in [-1,1]; query_points [B,N,3] (t,y,x) px. `is_training` is
        accepted for parity with tapnet; TAPIR behaves identically in both modes. Returns
        `track_with_grids`'s dict.
        """
        del is_training
        grids = self.get_feature_grids(video, refinement_resolutions)
        return self.track_with_grids(grids, query_points, query_chunk_size)

    def get_feature_grids(
        self, video: torch.Tensor, refinement_resolutions: list[tuple[int, int]] | None = None
    ) -> FeatureGrids:
        """Encodes every frame of video [B,T,H,W,3] in [-1,1] once, at all needed resolutions."""
        b, t, h, w, _ = video.shape
        if refinement_resolutions is None:
            refinement_resolutions = default_refinement_resolutions((h, w), self.initial_resolution)
        resolutions = [self.initial_resolution, *(_hw(r) for r in refinement_resolutions)]
        frames = video.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)
        computed: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for res in resolutions:
            if res[0] % 8 or res[1] % 8:
                raise ValueError(f"TAPIR resolutions must be multiples of 8, got {res}")
            if res not in computed:
                computed[res] = self._encode(frames, res, b)
        return FeatureGrids(
            lowres=tuple(computed[r][0] for r in resolutions),
            hires=tuple(computed[r][1] for r in resolutions),
            resolutions=tuple(resolutions),
            video_hw=(h, w),
        )

    def _encode(
        self, frames: torch.Tensor, hw: tuple[int, int], batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [M,3,H,W] -> lowres [B,T,h,w,256], hires [B,T,2h,2w,128] at size hw."""
        if tuple(frames.shape[-2:]) != hw:
            frames = F.interpolate(frames, size=hw, mode="bilinear", align_corners=False)
        chunk = self.feature_extractor_chunk_size or frames.shape[0]
        lowres_chunks: list[torch.Tensor] = []
        hires_chunks: list[torch.Tensor] = []
        for start in range(0, frames.shape[0], chunk):
            hi, lo = self.resnet_torch(frames[start : start + chunk])
            lo = lo.permute(0, 2, 3, 1)
            if self.extra_convs is not None:
                lo = self.extra_convs(lo)
            lowres_chunks.append(_l2_normalize(lo))
            hires_chunks.append(_l2_normalize(hi.permute(0, 2, 3, 1)))
        lowres, hires = torch.cat(lowres_chunks), torch.cat(hires_chunks)
        return lowres.unflatten(0, (batch, -1)), hires.unflatten(0, (batch, -1))

    def track_with_grids(
        self, grids: FeatureGrids, query_points: torch.Tensor, query_chunk_size: int = 64
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Tracks query_points [B,N,3] (t,y,x) px against precomputed grids.

        Returns tracks [B,N,T,2] (x,y) px, occlusion and expected_dist logits [B,N,T] (higher =
        occluded / far from the truth), and unrefined_{tracks,occlusion,expected_dist}: lists
        of the initial and each intermediate iterate (all but the last).
        """
        video_h, video_w = grids.video_hw

        def to_grid(grid: torch.Tensor) -> torch.Tensor:
            scale = [1.0, grid.shape[2] / video_h, grid.shape[3] / video_w]
            return query_points * torch.tensor(scale, device=query_points.device)

        query_feats = [
            [_sample_frames(g, to_grid(g)) for g in grid_set]
            for grid_set in (grids.lowres, grids.hires)
        ]
        pyramids = [self._pyramid(grids, level) for level in range(1, len(grids.resolutions))]

        per_chunk = []
        for start in range(0, query_points.shape[1], query_chunk_size):
            sl = slice(start, start + query_chunk_size)
            per_chunk.append(
                self._track_chunk(
                    grids,
                    pyramids,
                    [f[:, sl] for f in query_feats[0]],
                    [f[:, sl] for f in query_feats[1]],
                    query_points[:, sl],
                )
            )
        iterates = [
            [torch.cat(parts, dim=1) for parts in zip(*chunk_lists, strict=True)]
            for chunk_lists in zip(*per_chunk, strict=True)
        ]
        tracks, occlusion, expected_dist = iterates
        p = self.num_pips_iter
        return {
            "tracks": torch.stack(tracks[p::p]).mean(0),
            "occlusion": torch.stack(occlusion[p::p]).mean(0),
            "expected_dist": torch.stack(expected_dist[p::p]).mean(0),
            "unrefined_tracks": tracks[:-1],
            "unrefined_occlusion": occlusion[:-1],
            "unrefined_expected_dist": expected_dist[:-1],
        }

    def _pyramid(self, grids: FeatureGrids, level: int) -> list[torch.Tensor]:
        """Correlation grids for one refinement level: hires, lowres, then 2x-pooled lowres."""
        pyramid = [grids.hires[level], grids.lowres[level]]
        for _ in range(self.pyramid_level):  # [B,T,h,w,C] read as [N,C,D,H,W]: pools h and w
            pyramid.append(F.avg_pool3d(pyramid[-1], kernel_size=(2, 2, 1)))
        return pyramid

    def _track_chunk(
        self,
        grids: FeatureGrids,
        pyramids: list[list[torch.Tensor]],
        lowres_queries: list[torch.Tensor],
        hires_queries: list[torch.Tensor],
        query_points: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Initial + refined iterates for one query chunk; tracks in video px."""
        init_h, init_w = self.initial_resolution
        video_h, video_w = grids.video_hw
        to_video = torch.tensor([video_w / init_w, video_h / init_h], device=query_points.device)
        to_init = torch.tensor([1.0, init_h / video_h, init_w / video_w], device=to_video.device)

        points, occ0, expd0 = self._initial_tracks(
            lowres_queries[0], grids.lowres[0], query_points * to_init
        )
        tracks, occlusion, expected_dist = [points * to_video], [occ0], [expd0]
        occ, expd, state = occ0, expd0, None
        for i in range(self.num_pips_iter * len(pyramids)):
            level = i // self.num_pips_iter + 1
            queries = [hires_queries[level], lowres_queries[level]]
            queries += [lowres_queries[level]] * self.pyramid_level
            points, occ, expd, state = self._refine(
                queries, pyramids[level - 1], points, occ, expd, state, grids.resolutions[level]
            )
            tracks.append(points * to_video)
            occlusion.append(occ)
            expected_dist.append(expd)
            if (i + 1) % self.num_pips_iter == 0:
                occ, expd, state = occ0, expd0, None
        return tracks, occlusion, expected_dist

    def _initial_tracks(
        self, query_feats: torch.Tensor, grid: torch.Tensor, query_points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cost-volume tracking: query_feats [B,n,C], grid [B,T,h,w,C], query_points [B,n,3]
        (t,y,x) at initial resolution -> points [B,n,T,2] (x,y) initial-res px, occ, expd [B,n,T].

        Each track passes exactly through its query point at the query frame.
        """
        mods = self.torch_cost_volume_track_mods
        b, t, h, w, _ = grid.shape
        n = query_feats.shape[1]
        cost = torch.einsum("bnc,bthwc->bnthw", query_feats, grid).reshape(b * n * t, 1, h, w)
        hidden = torch.relu(mods["hid1"](cost))

        heat = mods["hid2"](hidden).reshape(b, n, t, h * w)
        prob = torch.softmax(heat * self.softmax_temperature, dim=-1)
        ys, xs = torch.meshgrid(
            torch.arange(h, device=grid.device), torch.arange(w, device=grid.device), indexing="ij"
        )
        centres = torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(prob.dtype) + 0.5
        peak = centres[prob.argmax(-1)]
        near = (centres - peak[..., None, :]).square().sum(-1) < _SOFT_ARGMAX_RADIUS**2
        weights = prob * near
        points = torch.einsum("bntk,kc->bntc", weights, centres)
        points = points / weights.sum(-1, keepdim=True).clamp_min(1e-12)
        init_h, init_w = self.initial_resolution
        # as in tapnet: no gradient flows through the soft-argmax position
        points = points.detach() * torch.tensor([init_w / w, init_h / h], device=grid.device)
        at_query = (query_points[..., :1].round() == torch.arange(t, device=grid.device))[..., None]
        points = torch.where(at_query, query_points[:, :, None, [2, 1]], points)

        hidden = torch.relu(mods["hid3"](F.pad(hidden, (0, 2, 0, 2)))).mean(dim=(-2, -1))
        logits = mods["occ_out"](torch.relu(mods["hid4"](hidden))).reshape(b, n, t, 2)
        return points, logits[..., 0], logits[..., 1]

    def _refine(
        self,
        queries: list[torch.Tensor],
        pyramid: list[torch.Tensor],
        points: torch.Tensor,
        occ: torch.Tensor,
        expd: torch.Tensor,
        state: torch.Tensor | None,
        resolution: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One mixer update. points [B,n,T,2] (x,y) initial-res px; occ, expd [B,n,T]; state
        [B,n,T,384] track features (None at a level's first iteration: the query features)."""
        init_h, init_w = self.initial_resolution
        r = _PATCH_RADIUS
        offsets = torch.stack(
            torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij"), -1
        ).reshape(-1, 2)
        offsets = offsets.to(points.device, points.dtype)
        corrs = []
        for idx, (query, grid) in enumerate(zip(queries, pyramid, strict=True)):
            grid_h, grid_w = grid.shape[2:4]
            scale = torch.tensor([grid_h / init_h, grid_w / init_w], device=points.device)
            centre_yx = points.flip(-1) * scale
            if state is None:
                feats = query[:, :, None].expand(-1, -1, points.shape[2], -1)
            else:
                feats = state[..., :_HIRES_DIM] if idx == 0 else state[..., _HIRES_DIM:]
            if self.fused_refinement:
                corrs.append(_window_correlation(grid, centre_yx, feats))
                continue
            patch = _sample_patches(grid, centre_yx[..., None, :] + offsets)
            if state is None:
                corrs.append(torch.einsum("bntsc,bnc->bnts", patch, query))
            else:
                corrs.append(torch.einsum("bntsc,bntc->bnts", patch, feats))
        if state is None:
            state = torch.cat(queries[:2], dim=-1)[:, :, None].expand(-1, -1, points.shape[2], -1)
        mixer_in = torch.cat(
            [torch.zeros_like(points), occ[..., None], expd[..., None], state, *corrs], dim=-1
        )
        out = self.torch_pips_mixer(mixer_in.flatten(0, 1).float(), self.fused_refinement)
        out = out.unflatten(0, points.shape[:2])
        res_h, res_w = resolution
        step = out[..., :2] * torch.tensor([init_w / res_w, init_h / res_h], device=out.device)
        return points + step, occ + out[..., 2], expd + out[..., 3], state + out[..., 4:]


def load_bootstap(uri: str = DEFAULT_URI) -> TAPIR:
    """BootsTAP TAPIR in eval mode from the official `bootstapir_checkpoint_v2.pt` (any fsspec URI).

    The file is a plain torch state dict; it must match the model exactly, else CheckpointError.
    """
    state = load_torch_checkpoint(uri, what="torch state dict file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{uri!r} does not hold a plain state dict of tensors")
    model = TAPIR()
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = sorted(
        k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{uri!r} is not a BootsTAP TAPIR checkpoint: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(wrong_shape)} with wrong shapes {wrong_shape[:3]}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()
