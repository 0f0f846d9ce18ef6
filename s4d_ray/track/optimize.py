"""The optimize stage: track optimisation (Stereo4D paper Eqn 5), batched in JAX across tracks and clips.

Each track gets one scalar offset d_t per frame that moves its 3D point along the camera ray,
P'_t = P_t + d_t (P_t - C_t)/|P_t - C_t|. Per track the loss is

    (1 - w) L_static + w L_dynamic + L_reg,    w = sigmoid(p90(motion over mask frames) - 20)

L_static = w_s/(2 M^2) sum_ij m_i m_j |q_i - q_j|^2 with q = P'/(mean_{mask}|P'| + 1e-5),
M = sum m; L_dynamic = w_d sum_{D in 1,3,5} sum_t m_{t-D} m_t m_{t+D} ((P'_{t+D} - 2P'_t
+ P'_{t-D}) . r_t)^2 with indices clamped to the track's frames (edge padding);
L_reg = lambda sum_t m_t (1/(d_t + |P_t - C_t|) - 1/|P_t - C_t|)^2. The mask m is the
visibility with every invisible frame widened to a centred window of 5 frames; points outside
it are zeroed before optimising. Adam (lr 0.05) runs 100 steps from d = 0, independently per
track (the reference vmaps one optimisation per track; summing the per-track losses gives
every offset exactly its own track's gradient).

Semantics follow github.com/Stereo4d/stereo4d-code `track_optimization.py`, quirks included:
|P'| in the normaliser is the distance to the world origin; near the clip ends the clamped
indices turn the dynamic rows t < D and t > T-1-D into along-ray velocity terms, which pulls
moving tracks visible at the first or last frame towards zero depth velocity there; output
points outside the mask are NaN (the reference's NaN gradient at zeroed points makes those
offsets NaN), and the returned mask is the dilated one (the reference stores it as the new
visibility). The only behavioural difference: NaN motion is ignored by the percentile as in
the reference, but a track whose mask frames all have NaN motion gets w = 0 here instead of an
all-NaN result.

The rest differs in cost and rounding only: the static loss uses the exact identity
sum_ij m_i m_j |q_i - q_j|^2 = 2M sum_i m_i |q_i - mean_m q|^2 (O(T) per track instead of
O(T^2), on centred points), the dynamic term is expanded into per-frame constants, the motion
weight is computed once per track instead of every step, and the 100 steps run inside one
`lax.scan`. Adam magnifies float32 rounding to ~1e-3 m on rare frames; this formulation stays
closer to a float64 run of the reference than the float32 reference does. Each track is
optimised over its span only (first to last mask frame, `track_spans`: the same loss terms),
spans are padded to a few bucket lengths and tracks to one chunk size per bucket, so a process
compiles one program per bucket and reuses it across clips, and JAX's persistent compilation
cache (`jax_cache`) reuses it across processes; padding does not change results.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from s4d_ray.track.jax_cache import enable_compilation_cache
from s4d_ray.track.moving import MOTION_P90_THRESHOLD_PX

FRAME_BUCKETS = (32, 64, 128, 200, 256)
"""Padded clip lengths; longer clips round up to a multiple of `LONG_CLIP_FRAME_STEP`."""
LONG_CLIP_FRAME_STEP = 128
CPU_CHUNK_ELEMENTS = 1 << 12
"""Tracks x padded frames per jitted call on CPU: small enough for the ~40 live [N,T] planes
of a step to stay in cache (1 << 12 measured 1.37x faster per track than 1 << 13, which was
~2x faster than 1 << 16 and above)."""
ACCELERATOR_CHUNK_ELEMENTS = 1 << 21
"""Tracks x padded frames per jitted call on GPU/TPU: ~0.5 GB of working memory."""
MIN_CHUNK_TRACKS = 8
SECOND_DIFFERENCE_STEPS = (1, 3, 5)


class OptimizerSettings(NamedTuple):
    """Eqn 5 hyperparameters, the one definition (the reference's values as defaults): loss
    weights w_s, w_d and lambda, the motion threshold in px of the dynamic weight, Adam's
    learning rate and steps, and the window in frames that widens each invisible frame."""

    w_static: float = 100.0
    w_dynamic: float = 100.0
    lambda_reg: float = 0.1
    motion_threshold: float = MOTION_P90_THRESHOLD_PX
    learning_rate: float = 0.05
    num_steps: int = 100
    dilation_window: int = 5


DEFAULT_SETTINGS = OptimizerSettings()


class LossInputs(NamedTuple):
    """Per-chunk constants of the loss, padded to `[N,T]`; built once by `loss_inputs`.

    Frames at or beyond a track's length repeat its last frame (points, rays and, through
    `last_frame`, the offset), so edge-clamped neighbours equal the reference's clamped ones;
    every weight is zero on those frames.
    """

    ray_unit: jax.Array  # [3,N,T] unit (P - C), components first for contiguous planes
    ray_length: jax.Array  # [N,T] m, |P - C| + 1e-8 (1 where frame_weight is 0)
    centred_points: jax.Array  # [3,N,T] m, P minus its mean over mask frames
    squared_norm: jax.Array  # [N,T] m^2, |P|^2
    along_ray: jax.Array  # [N,T] m, P . ray_unit
    frame_weight: jax.Array  # [N,T] 0/1: mask frame and real frame
    second_difference: jax.Array  # [S,N,T] m, (P_{t+D} - 2P_t + P_{t-D}) . ray_unit_t
    ahead_cosine: jax.Array  # [S,N,T] ray_unit_{t+D} . ray_unit_t
    behind_cosine: jax.Array  # [S,N,T] ray_unit_{t-D} . ray_unit_t
    triple_weight: jax.Array  # [S,N,T] 0/1: m_{t-D} m_t m_{t+D} on real frames
    real_frame: jax.Array  # [N,T] bool
    last_frame: jax.Array  # [N] int, index of the track's last real frame
    motion_weight: jax.Array  # [N] w in [0, 1]


def dilate_invisible(
    visible: np.ndarray, window: int = DEFAULT_SETTINGS.dilation_window
) -> np.ndarray:
    """Mask `[N,T]` bool: frame t stays valid only if frames t - window//2 ...
    t + window - window//2 - 1 are all visible; frames beyond the clip count as visible."""
    visible = np.asarray(visible, dtype=bool)
    before = window // 2
    after = window - before - 1
    invisible = np.pad(~visible, ((0, 0), (before, after)), constant_values=False)
    windows = np.lib.stride_tricks.sliding_window_view(invisible, window, axis=1)
    return ~np.any(windows, axis=-1)


def motion_weights(
    motion: np.ndarray,
    mask: np.ndarray,
    motion_threshold: float = DEFAULT_SETTINGS.motion_threshold,
) -> np.ndarray:
    """Dynamic-loss weight per track `[N]`: sigmoid(p90(motion [N,T] px at mask frames) - thr).

    The percentile interpolates linearly between order statistics (numpy/jax default) and
    ignores NaN motion; a track with no such frame gets 0 (with no mask frame its loss is
    empty anyway).
    """
    motion = np.asarray(motion, dtype=np.float64)
    if motion.shape[1] == 0:
        return np.zeros(len(motion), np.float32)
    counted = np.asarray(mask, dtype=bool) & ~np.isnan(motion)
    ordered = np.sort(np.where(counted, motion, np.inf), axis=1)
    count = counted.sum(axis=1)
    position = 0.9 * np.maximum(count - 1, 0)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, np.maximum(count - 1, 0))
    fraction = position - lower
    rows = np.arange(len(motion))
    low_value = ordered[rows, lower]
    high_value = ordered[rows, upper]
    with np.errstate(invalid="ignore"):
        percentile = low_value + fraction * (high_value - low_value)
    weight = 1.0 / (1.0 + np.exp(-(percentile - motion_threshold)))
    return np.where(count > 0, weight, 0.0).astype(np.float32)


def _shift_clamped(values: jax.Array, step: int) -> jax.Array:
    """values[:, clip(t + step, 0, T-1)] along axis 1 with static slices (edge padding)."""
    length = values.shape[1]
    if abs(step) >= length:
        edge = values[:, -1:] if step > 0 else values[:, :1]
        return jnp.broadcast_to(edge, values.shape)
    if step > 0:
        edge = jnp.repeat(values[:, -1:], step, axis=1)
        return jnp.concatenate([values[:, step:], edge], axis=1)
    edge = jnp.repeat(values[:, :1], -step, axis=1)
    return jnp.concatenate([edge, values[:, :step]], axis=1)


def loss_inputs(
    points: jax.Array,
    camera_centers: jax.Array,
    mask: jax.Array,
    real_frame: jax.Array,
    last_frame: jax.Array,
    motion_weight: jax.Array,
) -> LossInputs:
    """Loss constants from edge-padded `points` (zero outside the mask) and `camera_centers`
    `[N,T,3]` m, `mask, real_frame [N,T]` bool, `last_frame [N]` int, `motion_weight [N]`."""
    ray = points - camera_centers
    ray_norm = jnp.linalg.norm(ray, axis=-1)
    ray_unit = ray / (ray_norm + 1e-8)[..., None]
    weight = mask.astype(jnp.float32)
    frame_weight = weight * real_frame
    count = jnp.maximum(frame_weight.sum(axis=1), 1.0)
    mean_point = jnp.sum(frame_weight[..., None] * points, axis=1) / count[:, None]

    second_difference, ahead_cosine, behind_cosine, triple_weight = [], [], [], []
    for step in SECOND_DIFFERENCE_STEPS:
        ahead = _shift_clamped(points, step) - 2 * points + _shift_clamped(points, -step)
        second_difference.append(jnp.sum(ahead * ray_unit, axis=-1))
        ahead_cosine.append(jnp.sum(_shift_clamped(ray_unit, step) * ray_unit, axis=-1))
        behind_cosine.append(jnp.sum(_shift_clamped(ray_unit, -step) * ray_unit, axis=-1))
        triple_weight.append(
            weight * _shift_clamped(weight, step) * _shift_clamped(weight, -step) * real_frame
        )
    return LossInputs(
        ray_unit=jnp.moveaxis(ray_unit, -1, 0),
        ray_length=jnp.where(frame_weight > 0, ray_norm + 1e-8, 1.0),
        centred_points=jnp.moveaxis(points - mean_point[:, None], -1, 0),
        squared_norm=jnp.sum(points * points, axis=-1),
        along_ray=jnp.sum(points * ray_unit, axis=-1),
        frame_weight=frame_weight,
        second_difference=jnp.stack(second_difference),
        ahead_cosine=jnp.stack(ahead_cosine),
        behind_cosine=jnp.stack(behind_cosine),
        triple_weight=jnp.stack(triple_weight),
        real_frame=real_frame,
        last_frame=last_frame,
        motion_weight=motion_weight,
    )


_EDGE = max(SECOND_DIFFERENCE_STEPS)


def _edge_padded(values: jax.Array) -> jax.Array:
    """values [N,T] -> [N,T+2E] with E = the largest second-difference step: the first and
    last frames repeated E times, so `_shift_clamped(values, step)` for |step| <= E is the
    plain slice `padded[:, E+step : E+step+T]` (slices fuse; a concatenate per shift does not).
    """
    rows = values.shape[0]
    head = jnp.broadcast_to(values[:, :1], (rows, _EDGE))
    tail = jnp.broadcast_to(values[:, -1:], (rows, _EDGE))
    return jnp.concatenate([head, values, tail], axis=1)


def _fold_edge_padded(padded: jax.Array, length: int) -> jax.Array:
    """Transpose of `_edge_padded` [N,T+2E] -> [N,T]: each pad frame adds into the edge frame
    it repeats."""
    frames = jnp.arange(length)[None, :]
    head = jnp.sum(padded[:, :_EDGE], axis=1, keepdims=True)
    tail = jnp.sum(padded[:, _EDGE + length :], axis=1, keepdims=True)
    inner = padded[:, _EDGE : _EDGE + length]
    return inner + jnp.where(frames == 0, head, 0.0) + jnp.where(frames == length - 1, tail, 0.0)


def _along_ray_residuals(offsets: jax.Array, inputs: LossInputs) -> list[jax.Array]:
    """Per second-difference step, the along-ray residual [N,T] of the dynamic loss; offsets
    past a track's last real frame are held at that frame's value (edge padding)."""
    length = offsets.shape[1]
    last_offset = jnp.take_along_axis(offsets, inputs.last_frame[:, None], axis=1)
    held = _edge_padded(jnp.where(inputs.real_frame, offsets, last_offset))
    return [
        inputs.second_difference[index]
        + inputs.ahead_cosine[index] * held[:, _EDGE + step : _EDGE + step + length]
        - 2 * held[:, _EDGE : _EDGE + length]
        + inputs.behind_cosine[index] * held[:, _EDGE - step : _EDGE - step + length]
        for index, step in enumerate(SECOND_DIFFERENCE_STEPS)
    ]


class _StaticGeometry(NamedTuple):
    """What the static loss and its gradient share, per chunk."""

    mask_count: jax.Array  # [N] mask frames M ("count" would shadow tuple.count)
    norm: jax.Array  # [N,T] m, |P'| (1 off the mask)
    mean_norm: jax.Array  # [N] m, mean |P'| over the mask
    deviation: jax.Array  # [3,N,T] m, P' minus its mask centroid (centred coordinates)
    spread: jax.Array  # [N] m^2, sum over the mask of |deviation|^2


def _static_geometry(offsets: jax.Array, inputs: LossInputs) -> _StaticGeometry:
    weight = inputs.frame_weight
    count = weight.sum(axis=1)
    adjusted_squared_norm = inputs.squared_norm + offsets * (2 * inputs.along_ray + offsets)
    norm = jnp.sqrt(jnp.where(weight > 0, adjusted_squared_norm, 1.0))
    mean_norm = jnp.sum(weight * norm, axis=1) / (count + 1e-8)
    moved = inputs.centred_points + offsets * inputs.ray_unit
    centroid = jnp.sum(weight * moved, axis=2) / jnp.maximum(count, 1.0)
    deviation = moved - centroid[..., None]
    spread = jnp.sum(weight * jnp.sum(deviation**2, axis=0), axis=1)
    return _StaticGeometry(count, norm, mean_norm, deviation, spread)


def track_losses(offsets: jax.Array, inputs: LossInputs, settings: OptimizerSettings) -> jax.Array:
    """Eqn 5 per track `[N]` for `offsets [N,T]` m, in O(T) per track.

    Static: sum_ij m_i m_j |q_i - q_j|^2 = 2M sum_i m_i |q_i - mean q|^2, evaluated on points
    centred by a constant so float32 keeps the small spread. Dynamic: the along-ray second
    difference expanded as a constant plus the offsets' contribution through ray cosines.
    """
    weight = inputs.frame_weight
    count, _, mean_norm, _, spread = _static_geometry(offsets, inputs)
    static = (
        settings.w_static
        * count
        * spread
        / ((mean_norm + 1e-5) ** 2 * jnp.maximum(count * count, 1.0))
    )

    dynamic = jnp.zeros_like(count)
    for index, along_ray in enumerate(_along_ray_residuals(offsets, inputs)):
        dynamic = dynamic + jnp.sum(inputs.triple_weight[index] * along_ray**2, axis=1)
    dynamic = settings.w_dynamic * dynamic

    inverse_change = 1 / (offsets + inputs.ray_length + 1e-8) - 1 / (inputs.ray_length + 1e-8)
    regularization = settings.lambda_reg * jnp.sum(weight * inverse_change**2, axis=1)

    motion_weight = inputs.motion_weight
    return (1 - motion_weight) * static + motion_weight * dynamic + regularization


def track_gradients(
    offsets: jax.Array, inputs: LossInputs, settings: OptimizerSettings
) -> jax.Array:
    """Gradient `[N,T]` of `sum(track_losses(offsets, ...))` with respect to `offsets`, written
    out by hand (one pass, no loss value, no autodiff tape): what each Adam step needs.

    Static: d spread / d d_t = 2 w_t (P'_t - centroid) . r_t (the centroid's own term vanishes:
    the weighted deviations sum to zero), d mean|P'| / d d_t = w_t (a_t + d_t)/|P'_t| / M.
    Dynamic: the second differences are linear in the held offsets; their transposes pad back
    into the edge-padded offsets, fold into the clip's edge frames (`_fold_edge_padded`) and
    into the held last frame.
    """
    weight = inputs.frame_weight
    count, norm, mean_norm, deviation, spread = _static_geometry(offsets, inputs)
    scale = settings.w_static * count / jnp.maximum(count * count, 1.0)
    denominator = mean_norm + 1e-5
    d_spread = 2 * weight * jnp.sum(deviation * inputs.ray_unit, axis=0)
    d_mean_norm = weight * (inputs.along_ray + offsets) / norm / (count + 1e-8)[:, None]
    static = (scale / denominator**2)[:, None] * d_spread - (2 * scale * spread / denominator**3)[
        :, None
    ] * d_mean_norm

    length = offsets.shape[1]
    d_held = jnp.zeros_like(offsets)
    d_padded = jnp.zeros((offsets.shape[0], length + 2 * _EDGE), offsets.dtype)
    residuals = _along_ray_residuals(offsets, inputs)
    for index, (step, along_ray) in enumerate(zip(SECOND_DIFFERENCE_STEPS, residuals, strict=True)):
        d_along = 2 * settings.w_dynamic * inputs.triple_weight[index] * along_ray
        d_held = d_held - 2 * d_along
        # transposes of the windows at +step and -step of the edge-padded held offsets
        d_padded = d_padded + jnp.pad(
            inputs.ahead_cosine[index] * d_along, ((0, 0), (_EDGE + step, _EDGE - step))
        )
        d_padded = d_padded + jnp.pad(
            inputs.behind_cosine[index] * d_along, ((0, 0), (_EDGE - step, _EDGE + step))
        )
    d_held = d_held + _fold_edge_padded(d_padded, length)
    held_elsewhere = jnp.sum(jnp.where(inputs.real_frame, 0.0, d_held), axis=1)
    frames = jnp.arange(offsets.shape[1])[None, :]
    dynamic = jnp.where(inputs.real_frame, d_held, 0.0) + jnp.where(
        frames == inputs.last_frame[:, None], held_elsewhere[:, None], 0.0
    )

    shifted_length = offsets + inputs.ray_length + 1e-8
    inverse_change = 1 / shifted_length - 1 / (inputs.ray_length + 1e-8)
    regularization = -2 * settings.lambda_reg * weight * inverse_change / shifted_length**2

    motion_weight = inputs.motion_weight[:, None]
    return (1 - motion_weight) * static + motion_weight * dynamic + regularization


@partial(jax.jit, static_argnames=("settings", "autodiff"))
def _optimize_chunk(
    points: jax.Array,
    camera_centers: jax.Array,
    mask: jax.Array,
    real_frame: jax.Array,
    last_frame: jax.Array,
    motion_weight: jax.Array,
    settings: OptimizerSettings,
    autodiff: bool = False,
) -> jax.Array:
    """Optimised points `[N,T,3]` m for one padded chunk (see `loss_inputs`); the gradient
    by `track_gradients`, or with `autodiff` by jax.grad of `track_losses` (the former path)."""
    inputs = loss_inputs(points, camera_centers, mask, real_frame, last_frame, motion_weight)
    optimizer = optax.adam(settings.learning_rate)

    def step(carry, _):
        offsets, state = carry
        if autodiff:
            gradient = jax.grad(lambda o: jnp.sum(track_losses(o, inputs, settings)))(offsets)
        else:
            gradient = track_gradients(offsets, inputs, settings)
        updates, state = optimizer.update(gradient, state)
        return (optax.apply_updates(offsets, updates), state), None

    offsets = jnp.zeros(mask.shape, jnp.float32)
    (offsets, _), _ = jax.lax.scan(
        step, (offsets, optimizer.init(offsets)), None, length=settings.num_steps
    )
    return points + offsets[..., None] * jnp.moveaxis(inputs.ray_unit, 0, -1)


def frame_bucket(num_frames: int, buckets: Sequence[int] = FRAME_BUCKETS) -> int:
    """Padded length for a clip of `num_frames` frames."""
    for bucket in buckets:
        if num_frames <= bucket:
            return bucket
    return -(-num_frames // LONG_CLIP_FRAME_STEP) * LONG_CLIP_FRAME_STEP


def default_chunk_elements() -> int:
    """Chunk budget (tracks x padded frames) for JAX's default backend."""
    return CPU_CHUNK_ELEMENTS if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK_ELEMENTS


def chunk_capacity(padded_frames: int, max_chunk_elements: int) -> int:
    """Tracks per chunk: the largest power of two (>= `MIN_CHUNK_TRACKS`) with
    tracks x `padded_frames` <= `max_chunk_elements`. Every chunk of a bucket has this size,
    the last one padded with empty tracks, so each bucket compiles exactly once."""
    capacity = MIN_CHUNK_TRACKS
    while capacity * 2 * padded_frames <= max_chunk_elements:
        capacity *= 2
    return capacity


class _PreparedClip(NamedTuple):
    points: np.ndarray  # [N,T,3] float32, zero outside the mask
    camera_centers: np.ndarray  # [T,3] float32
    mask: np.ndarray  # [N,T] bool
    motion_weight: np.ndarray  # [N] float32
    span_start: np.ndarray  # [N] int, first frame of the track's span (see `track_spans`)
    span_length: np.ndarray  # [N] int, frames in the span, 0 for a track with an empty mask


def track_spans(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per track `[N]`, the frames a track is optimised over: from its first to its last mask
    frame, plus one masked-out frame on each side that is not a clip end -> (start, length).

    Only mask frames carry loss terms, and a dynamic term couples frames t-D, t, t+D only
    when all three are mask frames, so cropping a track to its span changes no term: the
    extra frame makes index clamping at a cropped end land on a zero-weight frame, as the
    clamping at the clip ends does in the uncropped track. Tracks seen on a fraction of the
    clip then cost that fraction (the offsets of all other frames stay 0 either way).
    """
    mask = np.asarray(mask, dtype=bool)
    num_frames = mask.shape[1]
    seen = mask.any(axis=1)
    first = np.argmax(mask, axis=1)
    last = num_frames - 1 - np.argmax(mask[:, ::-1], axis=1)
    start = np.maximum(first - 1, 0)
    stop = np.minimum(last + 1, num_frames - 1)
    return np.where(seen, start, 0), np.where(seen, stop - start + 1, 0)


def _prepare_clip(
    points: np.ndarray,
    visible: np.ndarray,
    camera_centers: np.ndarray,
    motion: np.ndarray,
    settings: OptimizerSettings,
    crop_spans: bool = True,
) -> _PreparedClip:
    """Check shapes, dilate the visibility, zero points outside the mask, weigh motion."""
    points = np.asarray(points, dtype=np.float32)
    visible = np.asarray(visible, dtype=bool)
    camera_centers = np.asarray(camera_centers, dtype=np.float32)
    motion = np.asarray(motion, dtype=np.float32)
    if points.ndim != 3 or points.shape[2] != 3:
        raise ValueError(f"points must be [N,T,3], got {points.shape}")
    num_tracks, num_frames = points.shape[:2]
    if visible.shape != (num_tracks, num_frames):
        raise ValueError(f"visible must be {(num_tracks, num_frames)}, got {visible.shape}")
    if motion.shape != (num_tracks, num_frames):
        raise ValueError(f"motion must be {(num_tracks, num_frames)}, got {motion.shape}")
    if camera_centers.shape != (num_frames, 3):
        raise ValueError(f"camera_centers must be {(num_frames, 3)}, got {camera_centers.shape}")
    if not np.isfinite(camera_centers).all():
        raise ValueError("camera_centers must be finite")
    mask = dilate_invisible(visible, settings.dilation_window)
    if not np.isfinite(points[mask]).all():
        raise ValueError("points must be finite at the frames kept by the mask")
    masked_points = np.where(mask[..., None], points, np.float32(0))
    weight = motion_weights(motion, mask, settings.motion_threshold)
    if crop_spans:
        start, length = track_spans(mask)
    else:
        start = np.zeros(num_tracks, np.int64)
        length = np.where(mask.any(axis=1), num_frames, 0)
    return _PreparedClip(masked_points, camera_centers, mask, weight, start, length)


class _Segment(NamedTuple):
    clip: int
    tracks: np.ndarray  # [r] int, track indices of the clip
    chunk_row: int


def _chunk_plan(
    members: Sequence[tuple[int, np.ndarray]], capacity: int
) -> Iterator[list[_Segment]]:
    """Split `(clip, track indices)` groups (in order) into chunks of `capacity` tracks."""
    chunk: list[_Segment] = []
    filled = 0
    for clip_index, tracks in members:
        first = 0
        while first < len(tracks):
            stop = min(len(tracks), first + capacity - filled)
            chunk.append(_Segment(clip_index, tracks[first:stop], filled))
            filled += stop - first
            first = stop
            if filled == capacity:
                yield chunk
                chunk, filled = [], 0
    if chunk:
        yield chunk


def optimize_clips(
    clips: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    settings: OptimizerSettings = DEFAULT_SETTINGS,
    frame_buckets: Sequence[int] = FRAME_BUCKETS,
    max_chunk_elements: int | None = None,
    crop_spans: bool = True,
    autodiff: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Optimise the tracks of many clips, sharing jitted chunks between clips.

    Each clip is `(points [N,T,3] m world, visible [N,T] bool (valid 3D point),
    camera_centers [T,3] m world, motion [N,T] px)`; N and T may differ between clips.
    Returns per clip `(points_opt [N,T,3] float32 m, NaN outside the mask; mask [N,T] bool)`,
    optimised with the hyperparameters `settings`. Clips are grouped by padded length (`frame_buckets`), their tracks packed into chunks of
    at most `max_chunk_elements` tracks x frames (default: `default_chunk_elements()`);
    results do not depend on the packing. With `crop_spans` (default) each track is optimised
    over its span only (`track_spans`) and grouped by the span's padded length: the same loss
    terms, so the same result up to float32 rounding, at a fraction of the work for tracks
    seen on part of the clip; False pads every track to its clip's length. `autodiff` takes
    Adam's gradient from jax.grad instead of `track_gradients` (same values, ~2x the work).
    """
    enable_compilation_cache()
    prepared = [_prepare_clip(*clip, settings, crop_spans) for clip in clips]
    outputs = [np.full(clip.points.shape, np.nan, np.float32) for clip in prepared]

    # tracks are grouped by the padded length of their span, not of their clip
    by_bucket: dict[int, list[tuple[int, np.ndarray]]] = {}
    for clip_index, clip in enumerate(prepared):
        buckets = np.array([frame_bucket(n, frame_buckets) for n in clip.span_length.tolist()])
        for bucket in np.unique(buckets[clip.span_length > 0]).tolist():
            tracks = np.flatnonzero((buckets == bucket) & (clip.span_length > 0))
            by_bucket.setdefault(bucket, []).append((clip_index, tracks))

    budget = max_chunk_elements or default_chunk_elements()
    pending = []
    for padded_frames, members in sorted(by_bucket.items()):
        capacity = chunk_capacity(padded_frames, budget)
        for segments in _chunk_plan(members, capacity):
            arrays = _pack_chunk(segments, prepared, capacity, padded_frames)
            pending.append(
                (
                    segments,
                    padded_frames,
                    _optimize_chunk(*arrays, settings=settings, autodiff=autodiff),
                )
            )

    for segments, padded_frames, optimized in pending:
        optimized = np.asarray(optimized)
        for segment in segments:
            clip = prepared[segment.clip]
            rows = slice(segment.chunk_row, segment.chunk_row + len(segment.tracks))
            frame, inside = _span_frames(clip, segment.tracks, padded_frames)
            track = np.broadcast_to(segment.tracks[:, None], frame.shape)
            inside &= clip.mask[track, frame]
            outputs[segment.clip][track[inside], frame[inside]] = optimized[rows][inside]
    return [(output, clip.mask) for output, clip in zip(outputs, prepared, strict=True)]


def _span_frames(
    clip: _PreparedClip, tracks: np.ndarray, padded_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Clip frame of each padded span frame [r,F] (the last span frame repeated past the
    span's end), and whether it is inside the span [r,F]."""
    local = np.arange(padded_frames)[None, :]
    length = clip.span_length[tracks][:, None]
    frame = clip.span_start[tracks][:, None] + np.minimum(local, length - 1)
    return frame, local < length


def _pack_chunk(
    segments: Sequence[_Segment],
    clips: Sequence[_PreparedClip],
    num_rows: int,
    padded_frames: int,
) -> tuple[np.ndarray, ...]:
    """Edge-padded chunk arrays for `_optimize_chunk`; unused rows have an empty mask."""
    points = np.zeros((num_rows, padded_frames, 3), np.float32)
    centers = np.zeros((num_rows, padded_frames, 3), np.float32)
    mask = np.zeros((num_rows, padded_frames), bool)
    real_frame = np.zeros((num_rows, padded_frames), bool)
    last_frame = np.zeros(num_rows, np.int32)
    motion_weight = np.zeros(num_rows, np.float32)
    for segment in segments:
        clip = clips[segment.clip]
        rows = slice(segment.chunk_row, segment.chunk_row + len(segment.tracks))
        frame, inside = _span_frames(clip, segment.tracks, padded_frames)
        track = segment.tracks[:, None]
        points[rows] = clip.points[track, frame]
        centers[rows] = clip.camera_centers[frame]
        mask[rows] = clip.mask[track, frame]
        real_frame[rows] = inside
        last_frame[rows] = clip.span_length[segment.tracks] - 1
        motion_weight[rows] = clip.motion_weight[segment.tracks]
    return points, centers, mask, real_frame, last_frame, motion_weight


def optimize_tracks(
    points: np.ndarray,
    visible: np.ndarray,
    camera_centers: np.ndarray,
    motion: np.ndarray,
    *,
    settings: OptimizerSettings = DEFAULT_SETTINGS,
) -> tuple[np.ndarray, np.ndarray]:
    """Optimise one clip's tracks (Eqn 5) with the hyperparameters `settings`.

    `points [N,T,3]` m world (NaN allowed where not visible), `visible [N,T]` bool (valid 3D
    point), `camera_centers [T,3]` m world, `motion [N,T]` px 2D motion displacement ->
    (`points_opt [N,T,3]` float32 m, NaN outside the mask; `mask [N,T]` bool, the visibility
    with invisible frames dilated over `settings.dilation_window` frames).
    """
    ((points_opt, mask),) = optimize_clips(
        [(points, visible, camera_centers, motion)], settings=settings
    )
    return points_opt, mask
