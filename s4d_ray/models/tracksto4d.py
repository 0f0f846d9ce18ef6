"""TracksTo4D (Kasten et al., NeurIPS 2024) in PyTorch: 2D point tracks → cameras, 3D, movement.

Loads the official NVlabs/tracks-to-4d checkpoints (`{'epoch', 'model_state_dict',
'optimizer_state_dict', 'loss'}` + a JSON config) with their state-dict names unchanged.
Written from the published architecture; device-agnostic, attention via
`scaled_dot_product_attention`.

Input `tracks [B,N,C,F]`: per track and frame (x, y) normalised by K⁻¹ (x = (u − cx)/fx) and,
when the config has `use_visible_input`, a visibility channel (1 visible, 0 not). Pipeline:

- every channel is encoded as [value, sin(2^k·π·value), cos(2^k·π·value) for k < positional_dim]
  plus a constant 1, then LayerNorm → Linear → LayerNorm to `network_width1` features;
- 1-D sin/cos positional embedding over frames, then `network_depth` × (transformer over frames
  per track, transformer over tracks per frame), each a pre-norm block of `heads` × `dim_head`
  attention and an MLP of `mlp_dim`, with a final LayerNorm;
- camera head: mean over tracks → circular Conv1d over frames (kernel 31) → per frame a
  translation (3), focal correction (1), K basis weights (first fixed to 1) and a 6D rotation;
- point head: mean over frames → Linear → per track K 3D basis points and a movement level
  (ELU + 1): point(t) = Σ_k weight_k(t) · basis_k, the first basis the static part.

Outputs are camera→world: X_world = R · X_cam + t, so X_cam = Rᵀ (X_world − t); projections are
focal · (x, y) / max(z, 0.01) in normalised coordinates. World units are arbitrary (up to scale).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Literal, cast, overload

import torch
import torch.nn.functional as F
from torch import nn

from s4d_ray.errors import InputError
from s4d_ray.io import fs
from s4d_ray.models.weights import CheckpointError, load_torch_checkpoint

CHECKPOINT_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "loss")
MIN_DEPTH = 0.01  # projections divide by max(z, MIN_DEPTH), as the official model
MOVEMENT_EPS = 1e-5  # movement level = ELU(x) + 1 + eps > 0

# Keys of the official JSON config that do not describe the network (training settings).
_NON_MODEL_KEYS = frozenset(
    {
        "sparsity_dynamic_coeff",
        "reprojection_dynamic_coeff",
        "dataset_folder",
        "dataset_folder_validation",
        "conv_kernel_size",
        "continue_trainining_checkpoint",
        "continue_trainining",
        "weight_dynamic_reprojections",
        "trim_high_loss",
        "logs_folder",
    }
)


class TracksInputError(InputError):
    """Tracks that the network cannot take: wrong shape, NaN/inf, or no visible point."""


CONFIG_LIMITS = {
    "network_width1": (1, 4096),
    "positional_dim": (0, 32),
    "K_basis": (1, 64),
    "network_depth": (1, 32),
    "max_cameras": (1, 10_000),
    "heads": (1, 64),
    "dim_head": (1, 256),
    "mlp_dim": (1, 16_384),
    "camera_kernel_size": (1, 255),
}
"""Bounds on every size of a TracksTo4D config (official: width 256, positional_dim 12, K 12,
depth 3, 50 cameras, 16 heads x 64, MLP 2048, kernel 31), checked before anything is built;
the checkpoint's tensor shapes must then match the config's (`load_tracksto4d`)."""
MAX_CONFIG_BYTES = 1 << 20
"""A TracksTo4D JSON config is < 1 kB; a larger file is refused unread."""


@dataclasses.dataclass(frozen=True)
class TracksTo4DConfig:
    """Network keys of an official JSON config (same names) plus the fixed official sizes.

    network_width1: feature width; positional_dim: sin/cos frequencies per input channel;
    K_basis: basis points per track; use_visible_input: a visibility channel is input;
    network_depth: (frames, tracks) transformer pairs; max_cameras: frames the model was
    trained on (windows are at most this long). heads / dim_head / mlp_dim /
    camera_kernel_size are fixed in the official code (16, 64, 2048, 31); they are config keys
    here only so tests can build tiny models. Loss weights ride along for training.
    """

    network_width1: int = 256
    positional_dim: int = 12
    K_basis: int = 12
    use_visible_input: bool = True
    network_depth: int = 3
    max_cameras: int = 50
    heads: int = 16
    dim_head: int = 64
    mlp_dim: int = 2048
    camera_kernel_size: int = 31
    reprojection_dynamic_coeff: float = 50.0
    sparsity_dynamic_coeff: float = 0.001

    def __post_init__(self) -> None:
        # types and bounds first, before anything is sized from them (the JSON may be hostile)
        for name, (low, high) in CONFIG_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"TracksTo4D config {name} must be an integer in [{low}, {high}], got {value!r}"
                )
        visible = self.use_visible_input
        if not isinstance(visible, (bool, int)) or visible not in (0, 1):
            raise ValueError(f"TracksTo4D config use_visible_input must be 0/1, got {visible!r}")
        object.__setattr__(self, "use_visible_input", bool(visible))
        for name in ("reprojection_dynamic_coeff", "sparsity_dynamic_coeff"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"TracksTo4D config {name} must be a finite number, got {value!r}")
        if self.camera_kernel_size % 2 != 1:
            raise ValueError("TracksTo4D config camera_kernel_size must be odd")

    @property
    def input_channels(self) -> int:
        """Channels per track and frame: x, y (and visibility)."""
        return 3 if self.use_visible_input else 2

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TracksTo4DConfig:
        """Config from an official JSON dict; training-only keys are ignored, unknown keys fail."""
        if not isinstance(config, Mapping):
            raise ValueError(f"a TracksTo4D config is a JSON object, not {type(config).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - fields - _NON_MODEL_KEYS
        if unknown:
            raise ValueError(f"unknown TracksTo4D config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in config.items() if k in fields})

    def to_dict(self) -> dict[str, Any]:
        """JSON dict readable by `from_dict` and holding the keys the official scripts read."""
        out = dataclasses.asdict(self)
        out["use_visible_input"] = int(self.use_visible_input)
        out["conv_kernel_size"] = 15  # read (unused by the transformer) by the official scripts
        return out


OFFICIAL_CONFIG = TracksTo4DConfig()
"""`pretrained_checkpoints/TracksTo4D_pretrained_{cats,dogs,cats_dogs}.json` (network keys)."""


# ---------------------------------------------------------------------------------------------
# Modules (attribute names are the official state-dict names)
# ---------------------------------------------------------------------------------------------


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [S,L,D] → [S,L,D]: self-attention over L (scale dim_head^-0.5)."""
        q, k, v = self.to_qkv(self.norm(x)).unflatten(-1, (3, self.heads, -1)).unbind(-3)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return self.to_out(out.transpose(1, 2).flatten(-2))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _TransformerBlock(nn.Module):
    """One pre-norm attention + MLP layer with a final LayerNorm (a depth-1 transformer)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            [nn.ModuleList([_Attention(dim, heads, dim_head), _FeedForward(dim, mlp_dim)])]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            attention, feed_forward = cast(nn.ModuleList, layer)  # built in __init__
            x = x + attention(x)
            x = x + feed_forward(x)
        return self.norm(x)


def frame_position_embedding(frames: int, dim: int, device: torch.device) -> torch.Tensor:
    """[F,D] float32: sin(f·ω_i) then cos(f·ω_i), ω_i = 10000^(−i/(D/2−1)), i < D/2."""
    half = dim // 2
    omega = 1.0 / (10000.0 ** (torch.arange(half, device=device) / max(half - 1, 1)))
    angles = torch.arange(frames, device=device)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _SetOfSetsEncoder(nn.Module):
    """Features [B,N,F,D] from encoded tracks [B,N,F,Cin]: alternate frame / track attention."""

    def __init__(self, in_features: int, config: TracksTo4DConfig) -> None:
        super().__init__()
        dim = config.network_width1
        self.to_patch_embedding = nn.Sequential(
            nn.LayerNorm(in_features), nn.Linear(in_features, dim), nn.LayerNorm(dim)
        )
        blocks = (dim, config.heads, config.dim_head, config.mlp_dim)
        depth = config.network_depth
        self.transformer_frames = nn.ModuleList([_TransformerBlock(*blocks) for _ in range(depth)])
        self.transformer_points = nn.ModuleList([_TransformerBlock(*blocks) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, f, _ = x.shape
        x = self.to_patch_embedding(x)
        x = x.reshape(b * n, f, -1)
        x = x + frame_position_embedding(f, x.shape[-1], x.device).to(x.dtype)
        for over_frames, over_points in zip(
            self.transformer_frames, self.transformer_points, strict=True
        ):
            x = over_frames(x)  # [B·N, F, D]
            x = x.view(b, n, f, -1).transpose(1, 2).reshape(b * f, n, -1)
            x = over_points(x)  # [B·F, N, D]
            x = x.view(b, f, n, -1).transpose(1, 2).reshape(b * n, f, -1)
        return x.view(b, n, f, -1)


def rotation_from_6d(vec: torch.Tensor) -> torch.Tensor:
    """[...,6] → [...,3,3] with rows v1, v2, v3 (Gram-Schmidt of the two 3-vectors, v3 = v1×v2)."""
    a, b = vec[..., :3], vec[..., 3:]
    v1 = a / a.norm(dim=-1, keepdim=True)
    v2 = b - (b * v1).sum(dim=-1, keepdim=True) * v1
    v2 = v2 / v2.norm(dim=-1, keepdim=True)
    return torch.stack([v1, v2, torch.linalg.cross(v1, v2, dim=-1)], dim=-2)


class TracksTo4D(nn.Module):
    """The TracksTo4D network; `forward(tracks [B,N,C,F])` returns a dict of tensors (see there)."""

    frequencies: torch.Tensor  # buffer [P], registered in __init__

    def __init__(
        self,
        config: TracksTo4DConfig | Mapping[str, Any] = OFFICIAL_CONFIG,
        predict_focal_length: bool = False,
        detach_cameras_dynamic: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(config, TracksTo4DConfig):
            config = TracksTo4DConfig.from_dict(config)
        self.config = config
        self.predict_focal_length = predict_focal_length
        self.detach_cameras_dynamic = detach_cameras_dynamic
        channels = config.input_channels
        encoded = channels * (1 + 2 * config.positional_dim) + 1  # + the constant-1 channel
        self.transformer_my = _SetOfSetsEncoder(encoded, config)
        k = config.K_basis
        self.conv_final = nn.Conv1d(
            config.network_width1, 6 + 3 + 1 + k + 2, kernel_size=config.camera_kernel_size
        )
        self.fc1 = nn.Linear(config.network_width1, 3 * k + 1)
        nn.init.xavier_uniform_(self.conv_final.weight)
        nn.init.xavier_uniform_(self.fc1.weight)
        freqs = torch.pi * 2.0 ** torch.arange(config.positional_dim, dtype=torch.float32)
        self.register_buffer("frequencies", freqs, persistent=False)

    def check_tracks(self, tracks: torch.Tensor) -> None:
        """Raise TracksInputError unless tracks is finite [B,N,C,F] with a visible point per item."""
        c = self.config.input_channels
        if tracks.ndim != 4 or tracks.shape[2] != c or min(tracks.shape) < 1:
            raise TracksInputError(
                f"tracks must be [B,N,{c},F] with B, N, F >= 1 (x, y"
                f"{', visibility' if c == 3 else ''}), got {list(tracks.shape)}"
            )
        if not bool(torch.isfinite(tracks).all()):
            raise TracksInputError("tracks contain NaN or inf (mark unseen points invisible)")
        if c == 3 and not bool((tracks[:, :, 2] > 0).flatten(1).any(dim=1).all()):
            raise TracksInputError("a batch item has no visible track point")

    def encode_inputs(self, tracks: torch.Tensor) -> torch.Tensor:
        """tracks [B,N,C,F] → [B,N,F,C·(1+2P)+1]: values, per frequency sin(C) and cos(C), 1."""
        x = tracks.transpose(2, 3)  # [B,N,F,C]
        proj = x[..., None, :] * self.frequencies.to(x.dtype)[:, None]  # [B,N,F,P,C]
        waves = torch.cat([proj.sin(), proj.cos()], dim=-1).flatten(-2)
        return torch.cat([x, waves, torch.ones_like(x[..., :1])], dim=-1)

    def _cameras(self, features: torch.Tensor) -> torch.Tensor:
        """features [B,N,F,D] → raw camera parameters [B,6+3+1+K+2,F] (circular conv)."""
        per_frame = features.mean(dim=1).transpose(1, 2)  # [B,D,F]
        frames, pad = per_frame.shape[-1], self.conv_final.kernel_size[0] // 2
        index = torch.arange(-pad, frames + pad, device=per_frame.device) % frames
        return F.conv1d(per_frame[..., index], self.conv_final.weight, self.conv_final.bias)

    def forward(self, tracks: torch.Tensor) -> dict[str, torch.Tensor]:
        """tracks [B,N,C,F] (x, y normalised by K⁻¹, visibility) → dict of:

        rotations [B,F,3,3] and translations [B,F,3] camera→world; points3d [B,F,3,N] world
        (static + dynamic bases), points3d_static [B,F,3,N]; points3d_camera [B,F,3,N];
        depths / depths_static [B,F,N] (camera z); projections / projections_static [B,F,2,N]
        (normalised image coordinates); movement [B,N] (> 0, large = moving); basis_points
        [B,N,3,K]; basis_weights [B,K,F] (row 0 is 1); focal [B,F,1] (1 unless predicted).
        """
        self.check_tracks(tracks)
        b, n, _, f = tracks.shape
        k = self.config.K_basis
        features = self.transformer_my(self.encode_inputs(tracks))  # [B,N,F,D]
        cameras = self._cameras(features)
        per_point = self.fc1(features.mean(dim=2))  # [B,N,3K+1]
        basis_points = per_point[..., : 3 * k].reshape(b, n, 3, k)
        movement = F.elu(per_point[..., -1]) + 1 + MOVEMENT_EPS

        translations = cameras[:, :3].transpose(1, 2)  # [B,F,3]
        if self.predict_focal_length:
            focal = 1 + 0.05 * cameras[:, 3:4].transpose(1, 2)  # [B,F,1]
        else:
            focal = torch.ones(b, f, 1, dtype=cameras.dtype, device=cameras.device)
        weights = cameras[:, 4 : 4 + k]
        weights = torch.cat([torch.ones_like(weights[:, :1]), weights[:, 1:]], dim=1)  # [B,K,F]
        rotations = rotation_from_6d(cameras[:, 4 + k : 10 + k].transpose(1, 2))  # [B,F,3,3]

        static = basis_points[..., 0].transpose(1, 2)[:, None].expand(b, f, 3, n)  # [B,F,3,N]
        dynamic = torch.einsum("bnck,bkf->bfcn", basis_points[..., 1:], weights[:, 1:])
        detach = self.detach_cameras_dynamic
        points = dynamic + (static.detach() if detach else static)

        def to_camera(pts: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
            return rot.transpose(-1, -2) @ (pts - trans[..., None])

        points_camera = to_camera(
            points,
            rotations.detach() if detach else rotations,
            translations.detach() if detach else translations,
        )
        static_camera = to_camera(static, rotations, translations)

        def project(cam: torch.Tensor) -> torch.Tensor:
            return focal[..., None] * cam[:, :, :2] / cam[:, :, 2:3].clamp(min=MIN_DEPTH)

        return {
            "rotations": rotations,
            "translations": translations,
            "points3d": points,
            "points3d_static": static,
            "points3d_camera": points_camera,
            "depths": points_camera[:, :, 2],
            "depths_static": static_camera[:, :, 2],
            "projections": project(points_camera),
            "projections_static": project(static_camera),
            "movement": movement,
            "basis_points": basis_points,
            "basis_weights": weights,
            "focal": focal,
        }


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def config_uri_for(checkpoint_uri: str) -> str:
    """The JSON config beside a checkpoint: `x.pt` → `x.json`."""
    stem = checkpoint_uri[: -len(".pt")] if checkpoint_uri.endswith(".pt") else checkpoint_uri
    return stem + ".json"


def read_config(uri: str) -> TracksTo4DConfig:
    """A TracksTo4D JSON config from any fsspec URI (CheckpointError when absent or invalid)."""
    try:
        data = fs.read_bytes(uri, max_bytes=MAX_CONFIG_BYTES)
    except FileNotFoundError as e:
        raise CheckpointError(f"TracksTo4D config {uri!r} not found (pass config=)") from e
    except OSError as e:  # a folder, FIFO or a file over MAX_CONFIG_BYTES
        raise CheckpointError(f"TracksTo4D config {uri!r}: {e}") from e
    try:
        return TracksTo4DConfig.from_dict(json.loads(data))
    except (ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"TracksTo4D config {uri!r} is not valid: {e}") from e


def _checkpoint_dict(uri: str) -> dict[str, Any]:
    checkpoint = load_torch_checkpoint(uri, what="TracksTo4D checkpoint")
    if not isinstance(checkpoint, dict) or set(checkpoint) != set(CHECKPOINT_KEYS):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{uri!r} is not a TracksTo4D checkpoint: expected keys {list(CHECKPOINT_KEYS)}, "
            f"got {keys}"
        )
    state = checkpoint["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{uri!r}: model_state_dict is not a dict of tensors")
    return checkpoint


def state_dict_problems(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing keys, unexpected keys and wrong shapes of `state` against `model` (empty = ok)."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & state.keys())
        if state[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):  # fmt: skip
        if items:
            problems.append(
                f"{len(items)} {label} ({', '.join(items[:4])}{' ...' * (len(items) > 4)})"
            )
    return problems


@overload
def load_tracksto4d(
    uri: str,
    config: TracksTo4DConfig | Mapping[str, Any] | str | None = None,
    predict_focal_length: bool = False,
    with_checkpoint: Literal[False] = False,
) -> TracksTo4D: ...


@overload
def load_tracksto4d(
    uri: str,
    config: TracksTo4DConfig | Mapping[str, Any] | str | None = None,
    predict_focal_length: bool = False,
    *,
    with_checkpoint: Literal[True],
) -> tuple[TracksTo4D, dict[str, Any]]: ...


@overload
def load_tracksto4d(
    uri: str,
    config: TracksTo4DConfig | Mapping[str, Any] | str | None = None,
    predict_focal_length: bool = False,
    with_checkpoint: bool = False,
) -> TracksTo4D | tuple[TracksTo4D, dict[str, Any]]: ...


def load_tracksto4d(
    uri: str,
    config: TracksTo4DConfig | Mapping[str, Any] | str | None = None,
    predict_focal_length: bool = False,
    with_checkpoint: bool = False,
) -> TracksTo4D | tuple[TracksTo4D, dict[str, Any]]:
    """TracksTo4D in eval mode from an official-format checkpoint at `uri` (any fsspec URI).

    `config`: a TracksTo4DConfig, a dict, a JSON URI, or None for the JSON beside the checkpoint
    (`x.pt` → `x.json`). Loads with `torch.load(weights_only=True)`; every key and shape must
    match the config's network, else CheckpointError (naming a config mismatch when shapes
    differ). `with_checkpoint=True` also returns the file's dict (epoch, optimizer state, loss).
    """
    if config is None:
        config = read_config(config_uri_for(uri))
    elif isinstance(config, str):
        config = read_config(config)
    elif not isinstance(config, TracksTo4DConfig):
        try:
            config = TracksTo4DConfig.from_dict(config)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"TracksTo4D config for {uri!r} is not valid: {e}") from e
    checkpoint = _checkpoint_dict(uri)
    # the config's shapes against the file's before anything is allocated: a meta-device
    # model has every parameter shape and no storage
    with torch.device("meta"):
        shapes = TracksTo4D(config, predict_focal_length=predict_focal_length)
    problems = state_dict_problems(shapes, checkpoint["model_state_dict"])
    if problems:
        raise CheckpointError(
            f"{uri!r} does not match the TracksTo4D network of its config "
            f"(width {config.network_width1}, positional_dim {config.positional_dim}, "
            f"K {config.K_basis}, visible input {config.use_visible_input}, depth "
            f"{config.network_depth}): " + "; ".join(problems)
        )
    model = TracksTo4D(config, predict_focal_length=predict_focal_length)
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    model.eval()
    return (model, checkpoint) if with_checkpoint else model


def save_tracksto4d(
    model: TracksTo4D,
    uri: str,
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int = 0,
    loss: float = 0.0,
) -> None:
    """Write `uri` (.pt, the official dict) and its JSON config beside it, atomically."""
    checkpoint = {
        "epoch": int(epoch),
        "model_state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer_state_dict": optimizer.state_dict() if optimizer is not None else {},
        "loss": float(loss),
    }
    with fs.open_atomic(uri, "wb") as f:
        torch.save(checkpoint, f)
    fs.write_bytes(config_uri_for(uri), json.dumps(model.config.to_dict(), indent=1).encode())
