"""TracksTo4D inputs from release npz clips: 2D tracks by projection, windows, track choice.

A release clip holds metric 3D tracks (world, stored where seen) and the left rectified camera
per frame. Projecting each stored point into its frame's camera (RECTIFIED_SIZE px square,
RECTIFIED_HFOV_DEG) gives back the 2D tracks the engine tracked, so TracksTo4D needs no video.
The same projection gives ground truth: camera-space depth per track and frame, the poses, and
a movement flag (a track whose stored world positions span more than `moving_threshold_m`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, RECTIFIED_SIZE, intrinsics
from s4d_ray.io.clip_io import ClipRecord
from s4d_ray.track.moving import moving_by_extent

log = logging.getLogger(__name__)

MIN_DEPTH_M = 0.05  # points closer than this to the camera plane count as unseen


@dataclass(frozen=True)
class ClipTracks:
    """Dense per-clip arrays (N tracks, T frames).

    pixels [N,T,2] px (NaN where not stored); visible [N,T] bool (stored, in front of the camera
    and inside the image); points_world [N,T,3] m (NaN where not stored); depth [N,T] m (camera
    z); camera2world [T,4,4]; k [3,3] px intrinsics; image_size px (square).
    """

    clip_id: str
    pixels: np.ndarray
    visible: np.ndarray
    points_world: np.ndarray
    depth: np.ndarray
    camera2world: np.ndarray
    k: np.ndarray
    image_size: int

    @property
    def num_tracks(self) -> int:
        return int(self.visible.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.visible.shape[1])

    def normalized(self) -> np.ndarray:
        """[N,T,2] x, y normalised by K⁻¹ ((u − cx)/fx, (v − cy)/fy), NaN where not stored."""
        return (self.pixels - self.k[:2, 2]) / np.array([self.k[0, 0], self.k[1, 1]])


def clip_tracks(
    record: ClipRecord,
    image_size: int = RECTIFIED_SIZE,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> ClipTracks:
    """Project a clip's stored 3D track points into its left rectified cameras (see ClipTracks).

    When the record carries our `visibility [N,T]` extra, a point must also be marked visible.
    """
    world = record.dense_tracks()  # [N,T,3], NaN where not stored
    w2c = record.world2camera().astype(np.float64)  # [T,3,4]
    cam = np.einsum("tij,ntj->nti", w2c[:, :, :3], world) + w2c[None, :, :, 3]
    k = intrinsics(image_size, image_size, hfov_deg)
    z = cam[..., 2]
    stored = np.isfinite(z)
    with np.errstate(divide="ignore", invalid="ignore"):
        pixels = cam[..., :2] / z[..., None] * np.array([k[0, 0], k[1, 1]]) + k[:2, 2]
    inside = np.all((pixels >= 0) & (pixels < image_size), axis=-1)
    visible = stored & (np.nan_to_num(z) > MIN_DEPTH_M) & inside
    extra = record.extras.get("visibility")
    if extra is not None and np.shape(extra) == visible.shape:
        visible &= np.asarray(extra, dtype=bool)
    c2w = np.tile(np.eye(4), (record.num_frames, 1, 1))
    c2w[:, :3, :] = record.camera2world
    pixels[~stored] = np.nan
    return ClipTracks(
        clip_id=record.name,
        pixels=pixels,
        visible=visible,
        points_world=world,
        depth=np.where(stored, z, np.nan),
        camera2world=c2w,
        k=k,
        image_size=image_size,
    )


def frame_windows(num_frames: int, size: int = 50, overlap: int = 10) -> list[tuple[int, int]]:
    """[start, end) windows of at most `size` frames covering [0, num_frames), each sharing
    at least `overlap` frames with the previous one (the last one ends at num_frames)."""
    if num_frames < 1 or size < 2 or not 0 < overlap < size:
        raise ValueError(f"need frames >= 1, size >= 2, 0 < overlap < size; got {num_frames, size, overlap}")  # fmt: skip
    if num_frames <= size:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - size, size - overlap)) + [num_frames - size]
    return [(s, s + size) for s in starts]


def select_tracks(
    pixels: np.ndarray,
    visible: np.ndarray,
    max_tracks: int = 1000,
    min_visible: int = 10,
    grid: int = 8,
    image_size: int = RECTIFIED_SIZE,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Indices of at most `max_tracks` tracks of a window, spread over the image, long-lived.

    pixels [N,F,2] px and visible [N,F] of the window. Candidates are seen in at least
    min(min_visible, F) frames; each goes to the `grid`×`grid` image cell of its mean seen
    position; cells are visited round-robin, each giving its longest-seen remaining track
    (ties in random order when `rng` is given), so sparse regions are not crowded out.
    """
    counts = visible.sum(axis=1)
    candidates = np.nonzero(counts >= min(min_visible, visible.shape[1]))[0]
    if candidates.size <= max_tracks:
        return candidates
    seen = np.where(visible[candidates, :, None], pixels[candidates], 0.0)
    mean = seen.sum(axis=1) / counts[candidates, None]
    cell_xy = np.clip((mean / image_size * grid).astype(int), 0, grid - 1)
    cell = cell_xy[:, 1] * grid + cell_xy[:, 0]
    tiebreak = rng.random(candidates.size) if rng is not None else np.zeros(candidates.size)
    order = np.lexsort((tiebreak, -counts[candidates], cell))  # by cell, then longest first
    ranked_cell = cell[order]
    rank_in_cell = np.arange(order.size) - np.searchsorted(ranked_cell, ranked_cell)
    picked = order[np.lexsort((ranked_cell, rank_in_cell))][:max_tracks]  # round-robin
    return np.sort(candidates[picked])


def fill_unseen(values: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """values [N,F,C] with unseen entries replaced by the nearest seen frame's (0 if none)."""
    n, f = visible.shape
    frames = np.arange(f)
    last = np.maximum.accumulate(np.where(visible, frames, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(visible, frames, f)[:, ::-1], axis=1)[:, ::-1]
    use_next = (last < 0) | ((nxt < f) & (nxt - frames < frames - last))
    source = np.where(use_next, nxt, last)
    rows = np.arange(n)[:, None]
    out = values[rows, np.clip(source, 0, f - 1)]
    out[source < 0] = 0.0
    out[source >= f] = 0.0
    return np.nan_to_num(out)


def network_input(normalized: np.ndarray, visible: np.ndarray, with_visibility: bool) -> np.ndarray:
    """[N,F,2] normalised tracks + [N,F] visibility → float32 network input [N,C,F]."""
    xy = fill_unseen(normalized, visible)
    channels = [xy[..., 0], xy[..., 1]] + ([visible.astype(np.float64)] if with_visibility else [])
    return np.stack(channels, axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Training samples
# ---------------------------------------------------------------------------------------------

SAMPLE_COLUMNS = ("tracks", "visible", "points_camera", "camera2world", "moving")
"""tracks float32 [N,C,F] network input; visible bool [N,F]; points_camera float32 [N,F,3] m
(ground truth in each frame's camera, 0 where unseen); camera2world float32 [F,4,4] m;
moving float32 [N] (1 = the track moves in the world)."""


@dataclass(frozen=True)
class SampleConfig:
    """A sample: `frames` consecutive frames and `tracks` tracks seen in >= `min_visible` of them."""

    frames: int = 50
    tracks: int = 256
    min_visible: int = 10
    samples_per_clip: int = 16
    moving_threshold_m: float = 0.05
    with_visibility: bool = True
    seed: int = 0


@dataclass
class FilterCounts:
    """Why clips / windows gave no sample (counted, never silently dropped)."""

    clips: int = 0
    clips_unreadable: int = 0
    clips_too_short: int = 0
    windows_few_tracks: int = 0
    samples: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def clip_samples(
    tracks: ClipTracks, config: SampleConfig, rng: np.random.Generator, counts: FilterCounts
) -> list[dict[str, np.ndarray]]:
    """Up to `samples_per_clip` random (window, track set) samples of one clip (SAMPLE_COLUMNS)."""
    counts.clips += 1
    f = config.frames
    if tracks.num_frames < f:
        counts.clips_too_short += 1
        return []
    moving = moving_by_extent(tracks.points_world, config.moving_threshold_m).astype(np.float32)
    w2c = np.linalg.inv(tracks.camera2world)  # [T,4,4]
    normalized = tracks.normalized()
    samples = []
    for _ in range(config.samples_per_clip):
        s = int(rng.integers(0, tracks.num_frames - f + 1))
        visible = tracks.visible[:, s : s + f]
        eligible = np.nonzero(visible.sum(axis=1) >= min(config.min_visible, f))[0]
        if eligible.size < config.tracks:
            counts.windows_few_tracks += 1
            continue
        picked = np.sort(rng.choice(eligible, size=config.tracks, replace=False))
        vis = visible[picked]
        world = tracks.points_world[picked, s : s + f]
        cam = np.einsum("tij,ntj->nti", w2c[s : s + f, :3, :3], world) + w2c[None, s : s + f, :3, 3]
        samples.append(
            {
                "tracks": network_input(normalized[picked, s : s + f], vis, config.with_visibility),
                "visible": vis,
                "points_camera": np.where(vis[..., None], np.nan_to_num(cam), 0.0).astype(
                    np.float32
                ),
                "camera2world": tracks.camera2world[s : s + f].astype(np.float32),
                "moving": moving[picked],
            }
        )
    counts.samples += len(samples)
    return samples


def samples_from_uris(
    uris: list[str], config: SampleConfig, counts: FilterCounts | None = None
) -> list[dict[str, np.ndarray]]:
    """Samples of every readable clip in `uris` (unreadable / invalid clips are counted)."""
    from s4d_ray.io.clip_io import ClipValidationError, read_clip

    counts = counts if counts is not None else FilterCounts()
    out = []
    for uri in uris:
        try:
            tracks = clip_tracks(read_clip(uri))
        except (ClipValidationError, OSError) as e:
            counts.clips += 1
            counts.clips_unreadable += 1
            log.warning("tracksto4d samples: skipping %s: %s", uri, e)
            continue
        rng = np.random.default_rng(
            [config.seed, int.from_bytes(tracks.clip_id.encode()[-8:], "little")]
        )
        out.extend(clip_samples(tracks, config, rng, counts))
    return out
