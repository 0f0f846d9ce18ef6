"""Plain JAX transcription of the Stereo4D reference track optimiser (paper Eqn 5).

Written from `track_optimization.py` of github.com/Stereo4d/stereo4d-code to serve as the
baseline for `benchmarks/bench_optimize.py` and as the oracle for `tests/test_optimize.py`.
It keeps the reference's algorithmic shape on purpose, including its costs:

- per track a pairwise O(T^2) static loss;
- the 90th motion percentile recomputed inside the loss at every step;
- one Adam optimisation per track, `jax.vmap`-ed over tracks in chunks of 10,000 tracks,
  with a jitted step function driven by a Python loop of 100 steps (the step function is
  re-created, hence re-compiled, for every chunk).

The interface changes: the reference derives the motion scores from its `Track3d` object;
here they are an input, as in `s4d_ray.track.optimize`, and its hyperparameters come from that
module's `OptimizerSettings` (whose defaults are the reference's values). Not a library module:
import it only from benchmarks and tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from s4d_ray.track.optimize import DEFAULT_SETTINGS, OptimizerSettings

REFERENCE_CHUNK_TRACKS = 10_000


def dilate_zeros(mask: jax.Array, window_size: int) -> jax.Array:
    """Zero every entry of a 1-D 0/1 `mask [T]` within a centred window of a zero.

    Max filter over the inverted mask with `reduce_window`; positions beyond either end count
    as ones (the padding value of the inverted mask is 0).
    """
    inverted = 1 - mask
    before = window_size // 2
    after = window_size - before - 1
    widened = jax.lax.reduce_window(
        inverted,
        init_value=0.0,
        computation=jax.lax.max,
        window_dimensions=(window_size,),
        window_strides=(1,),
        padding=[(before, after)],
    )
    return 1 - widened


def shift_edge(array: jax.Array, shift: int, axis: int) -> jax.Array:
    """Shift `array` by `shift` along `axis` (positive: towards higher indices), repeating edges."""
    axis = axis % array.ndim
    before, after = max(shift, 0), max(-shift, 0)
    widths = [(0, 0)] * array.ndim
    widths[axis] = (before, after)
    padded = jnp.pad(array, widths, mode="edge")
    index = [slice(None)] * array.ndim
    index[axis] = slice(before - shift, before - shift + array.shape[axis])
    return padded[tuple(index)]


def static_loss(adjusted: jax.Array, masks: jax.Array, w_static: float) -> jax.Array:
    """Pairwise static loss of one track: `adjusted [T,3]` m, `masks [T]` (or [T,1]) 0/1."""
    adjusted = jnp.nan_to_num(adjusted)
    weights = masks.astype(jnp.float32).reshape(-1)
    norms = jnp.sqrt(jnp.sum(adjusted * adjusted * weights[:, None], axis=-1))
    mean_norm = jnp.nansum(norms) / (jnp.sum(weights) + 1e-8)
    scaled = adjusted / (mean_norm + 1e-5) * weights[:, None]
    differences = scaled[:, None, :] - scaled[None, :, :]
    squared = jnp.sum(differences**2, axis=-1)
    pair_weights = weights[:, None] * weights[None, :]
    pair_count = jnp.maximum(jnp.sum(pair_weights), 1.0)
    return (w_static / (2 * pair_count)) * jnp.nansum(squared * pair_weights)


def dynamic_loss(
    adjusted: jax.Array, masks: jax.Array, ray_unit: jax.Array, w_dynamic: float, delta: int
) -> jax.Array:
    """Along-ray second-difference loss of one track at frame step `delta` (edge padded)."""
    weights = masks.astype(jnp.float32).reshape(-1, 1)
    ahead = shift_edge(adjusted.T, -delta, axis=1).T
    behind = shift_edge(adjusted.T, delta, axis=1).T
    weights_ahead = shift_edge(weights.T, -delta, axis=1).T
    weights_behind = shift_edge(weights.T, delta, axis=1).T
    triple = weights * weights_ahead * weights_behind
    second_difference = ahead - 2 * adjusted + behind
    along_ray = jnp.nansum(second_difference * ray_unit, axis=1, keepdims=True)
    return jnp.nansum((along_ray * triple) ** 2) * w_dynamic


def regularization_loss(
    offsets: jax.Array, ray_lengths: jax.Array, masks: jax.Array, lambda_reg: float
) -> jax.Array:
    """Inverse-depth change penalty of one track: `offsets [T]` m, `ray_lengths [T]` m."""
    weights = masks.astype(jnp.float32).reshape(-1)
    shifted = offsets + ray_lengths + 1e-8
    penalty = ((1 / shifted - 1 / (ray_lengths + 1e-8)) ** 2) * weights
    return lambda_reg * jnp.nansum(penalty)


def track_loss(
    offsets: jax.Array,
    points: jax.Array,
    centers: jax.Array,
    masks: jax.Array,
    motion: jax.Array,
    motion_threshold: float,
    w_static: float,
    w_dynamic: float,
    lambda_reg: float,
) -> jax.Array:
    """Eqn 5 for one track: `points, centers [T,3]` m, `masks [T,1]` bool, `motion [T]` px."""
    weights = masks.astype(jnp.float32).reshape(-1)
    ray = points - centers
    ray_unit = ray / (jnp.linalg.norm(ray, axis=1, keepdims=True) + 1e-8)
    adjusted = points + ray_unit * offsets[:, None]
    ray_lengths = jnp.linalg.norm(ray, axis=1) + 1e-8
    valid_motion = jnp.where(weights > 0.5, motion, jnp.nan)
    percentile = jnp.nanpercentile(valid_motion, 90)
    dynamic_weight = 1 / (1 + jnp.exp(-(percentile - motion_threshold)))
    static = static_loss(adjusted, masks, w_static)
    dynamic = (
        dynamic_loss(adjusted, masks, ray_unit, w_dynamic, 1)
        + dynamic_loss(adjusted, masks, ray_unit, w_dynamic, 3)
        + dynamic_loss(adjusted, masks, ray_unit, w_dynamic, 5)
    )
    regularization = regularization_loss(offsets, ray_lengths, masks, lambda_reg)
    return (1 - dynamic_weight) * static + dynamic_weight * dynamic + regularization


def optimize_single_track(
    points: jax.Array,
    centers: jax.Array,
    masks: jax.Array,
    motion: jax.Array,
    motion_threshold: float,
    lambda_reg: float,
    w_static: float,
    w_dynamic: float,
    num_steps: int,
    learning_rate: float,
) -> jax.Array:
    """Adam on the per-frame offsets `[T]` m of one track, starting from zero."""
    offsets = jnp.zeros(points.shape[0])
    optimizer = optax.adam(learning_rate)
    state = optimizer.init(offsets)

    @jax.jit
    def step(offsets, state):
        loss, grads = jax.value_and_grad(track_loss)(
            offsets,
            points,
            centers,
            masks,
            motion,
            motion_threshold,
            w_static,
            w_dynamic,
            lambda_reg,
        )
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(offsets, updates), state, loss

    for _ in range(num_steps):
        offsets, state, _ = step(offsets, state)
    return offsets


def reference_optimize_tracks(
    points: np.ndarray,
    visible: np.ndarray,
    camera_centers: np.ndarray,
    motion: np.ndarray,
    *,
    settings: OptimizerSettings = DEFAULT_SETTINGS,
    chunk_tracks: int = REFERENCE_CHUNK_TRACKS,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference pipeline: `points [N,T,3]` m, `visible [N,T]`, `camera_centers [T,3]` m,
    `motion [N,T]` px -> (`points_opt [N,T,3]` m, dilated `mask [N,T]` bool), optimised with
    the hyperparameters `settings`.

    Points outside the mask come out NaN, as in the reference: there the static loss's
    sqrt(0) makes the gradient NaN, which Adam carries into the offset. `dtype=np.float64`
    (inside `jax.enable_x64(True)`) gives the float64 answer the float32 runs approximate.
    """
    centers = np.tile(np.asarray(camera_centers, dtype)[None], (len(points), 1, 1))
    dilate_tracks = jax.vmap(dilate_zeros, in_axes=(0, None))
    window = settings.dilation_window
    masks = np.asarray(dilate_tracks(jnp.asarray(visible, dtype), window)[..., None].astype(bool))
    masked_points = np.asarray(points, dtype) * masks
    motion = np.asarray(motion, dtype)
    optimize_tracks_vmap = jax.vmap(
        optimize_single_track, in_axes=(0, 0, 0, 0, None, None, None, None, None, None)
    )
    offsets = []
    for start in range(0, len(points), chunk_tracks):
        stop = start + chunk_tracks
        offsets.append(
            optimize_tracks_vmap(
                masked_points[start:stop],
                centers[start:stop],
                masks[start:stop],
                motion[start:stop],
                settings.motion_threshold,
                settings.lambda_reg,
                settings.w_static,
                settings.w_dynamic,
                settings.num_steps,
                settings.learning_rate,
            )
        )
    offsets = jnp.concatenate(offsets, axis=0)
    ray = masked_points - centers
    ray_unit = ray / (jnp.linalg.norm(ray, axis=-1, keepdims=True) + 1e-8)
    adjusted = masked_points + ray_unit * offsets[..., None]
    return np.asarray(adjusted), masks[..., 0]
