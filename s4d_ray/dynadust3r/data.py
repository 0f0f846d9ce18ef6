"""DynaDUSt3R training samples from Stereo4D clips: frame pairs, a query time, sparse 3D targets.

As the paper trains it: pick two frames i < j of one clip, 2 to 60 frames apart (clipped to the
clip length), and a query frame k between them (query time t = (k − i)/(j − i) in [0, 1]). The
clip's world-space 3D tracks (metres) are expressed in frame i's camera and splatted to the
nearest pixel of the image they are seen in:

* view 1 (image i): `pts1` = P_i, `motion1` = P_k − P_i for tracks visible (finite) at i;
* view 2 (image j): `pts2` = P_j, `motion2` = P_k − P_j for tracks visible at j,

all [H,W,3] in camera-i coordinates with validity masks [H,W] (`valid*` needs the point at its
own frame, `motion_valid*` also the point at k). When several tracks land on one pixel the one
nearest to that image's camera wins. Images are the left rectified views (square, 60° hfov)
resized to `image_size`, so the intrinsics are `geometry.intrinsics(size, size, hfov)`.

Filters (counted in `FilterCounts`): a clip needs at least `min_moving_fraction` of its tracks
to move more than `moving_threshold_m` in the world (fully static clips teach the motion heads
nothing but zeros, and the pointmap task is DUSt3R's own), and a pair needs `min_tracks` tracks
seen at i, j and k (fewer leaves a handful of supervised pixels: a noisy, badly normalised loss).
"""

from __future__ import annotations

import functools
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, intrinsics
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, npz_stem, read_clip
from s4d_ray.io.dense import dense_file, output_root_of_npz, read_dense
from s4d_ray.io.rectify import find_rectified_videos, iter_rectified
from s4d_ray.io.video import decode_first_frames
from s4d_ray.io.video_lookup import VIDEO_FORMAT_EXTRA, find_raw_video
from s4d_ray.track.moving import moving_by_extent

log = logging.getLogger(__name__)

TARGET_COLUMNS = (
    "pts1",
    "valid1",
    "motion1",
    "motion_valid1",
    "pts2",
    "valid2",
    "motion2",
    "motion_valid2",
)
TRAIN_COLUMNS = ("image1", "image2", "query_time", *TARGET_COLUMNS)


@dataclass(frozen=True)
class SampleConfig:
    """How samples are drawn from a clip (sizes in px, distances in metres)."""

    image_size: int = 512
    hfov_deg: float = RECTIFIED_HFOV_DEG
    min_gap: int = 2
    max_gap: int = 60
    pairs_per_clip: int = 16
    min_tracks: int = 256
    moving_threshold_m: float = 0.05
    min_moving_fraction: float = 0.01
    seed: int = 0


@dataclass
class FilterCounts:
    """What the filters kept and dropped, summed over clips."""

    clips_seen: int = 0
    clips_failed: int = 0
    """Clips that could not be read (corrupt npz or video, missing frames): skipped."""
    clips_static: int = 0
    clips_too_short: int = 0
    pairs_drawn: int = 0
    pairs_few_tracks: int = 0
    samples: int = 0
    per_clip: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    """Skipped clip id → `ErrorType: message`."""

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k not in ("per_clip", "failures")}


def draw_triplets(
    num_frames: int, count: int, rng: np.random.Generator, min_gap: int = 2, max_gap: int = 60
) -> np.ndarray:
    """`count` (i, j, k) frame triplets [count,3]: gap j − i uniform in [min_gap, max_gap]
    (max clipped to T − 1), i uniform where it fits, k uniform in [i, j]. Empty if T − 1 < min_gap.
    """
    top = min(max_gap, num_frames - 1)
    if top < min_gap or count <= 0:
        return np.zeros((0, 3), np.int64)
    gaps = rng.integers(min_gap, top + 1, size=count)
    first = rng.integers(0, num_frames - gaps)
    query = first + rng.integers(0, gaps + 1)
    return np.stack([first, first + gaps, query], axis=1).astype(np.int64)


def moving_fraction(tracks: np.ndarray, threshold_m: float) -> float:
    """Fraction of tracks [N,T,3] (world m, NaN = unseen) whose seen positions span > threshold."""
    if tracks.shape[0] == 0:
        return 0.0
    return float(np.mean(moving_by_extent(tracks, threshold_m)))


def to_camera(points_world: np.ndarray, world2camera: np.ndarray) -> np.ndarray:
    """World points [...,3] -> camera coordinates [...,3] with extrinsics [3,4]."""
    return points_world @ world2camera[:, :3].T + world2camera[:, 3]


def splat_nearest(
    points_own: np.ndarray, values: list[np.ndarray], k: np.ndarray, size: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Scatter per-point `values` (each [N,C]) to the pixel where `points_own` [N,3] (camera
    of the image they are seen in) project with intrinsics `k`; the nearest point wins a pixel.

    Returns the maps (each [size,size,C], NaN where empty) and the hit mask [size,size]. Pixel
    (x, y) covers [x, x+1) × [y, y+1) (centres at +0.5). Points behind the camera or outside
    the image are dropped.
    """
    z = points_own[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = points_own[:, 0] / z * k[0, 0] + k[0, 2]
        v = points_own[:, 1] / z * k[1, 1] + k[1, 2]
    col, row = np.floor(u), np.floor(v)
    inside = (z > 0) & (col >= 0) & (col < size) & (row >= 0) & (row < size)
    index = np.flatnonzero(inside)
    index = index[np.argsort(z[index], kind="stable")]
    flat = (row[index] * size + col[index]).astype(np.int64)
    flat, first = np.unique(flat, return_index=True)  # first occurrence = smallest depth
    chosen = index[first]
    hit = np.zeros(size * size, bool)
    hit[flat] = True
    maps = []
    for value in values:
        out = np.full((size * size, value.shape[1]), np.nan, np.float32)
        out[flat] = value[chosen]
        maps.append(out.reshape(size, size, value.shape[1]))
    return maps, hit.reshape(size, size)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square RGB image [S,S,3] uint8 -> [size,size,3] (area filter when shrinking)."""
    if image.shape[:2] == (size, size):
        return image
    shrink = size < image.shape[0]
    return cv2.resize(
        image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def build_sample(
    image_i: np.ndarray,
    image_j: np.ndarray,
    tracks: np.ndarray,
    world2camera: np.ndarray,
    triplet: tuple[int, int, int],
    image_size: int,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
) -> dict[str, Any]:
    """One training sample from frames i, j (left rectified, square uint8) and the clip's tracks.

    tracks [N,T,3] world m (NaN = unseen); world2camera [T,3,4]; triplet (i, j, k). Returns
    image1/image2 [H,W,3] uint8, query_time float32, frame_indices [3], and the targets of the
    module docstring: pts*/motion* [H,W,3] float32 m in camera i (0 where invalid) and
    valid*/motion_valid* [H,W] bool.
    """
    i, j, q = (int(x) for x in triplet)
    k = intrinsics(image_size, image_size, hfov_deg)
    point_k = tracks[:, q]
    seen_k = np.isfinite(point_k).all(axis=1)
    sample: dict[str, Any] = {  # arrays, and query_time a numpy float32 scalar
        "image1": resize_image(image_i, image_size),
        "image2": resize_image(image_j, image_size),
        "query_time": np.float32((q - i) / (j - i)),
        "frame_indices": np.array([i, j, q], np.int64),
    }
    point_k_in_i = to_camera(np.nan_to_num(point_k), world2camera[i])
    for view, frame in (("1", i), ("2", j)):
        point = tracks[:, frame]
        seen = np.isfinite(point).all(axis=1)
        own = to_camera(point[seen], world2camera[frame])
        in_i = to_camera(point[seen], world2camera[i])
        motion = point_k_in_i[seen] - in_i
        has_k = seen_k[seen].astype(np.float32)[:, None]
        (pts, mot, mot_ok), hit = splat_nearest(own, [in_i, motion, has_k], k, image_size)
        motion_valid = hit & (np.nan_to_num(mot_ok[..., 0]) > 0.5)
        sample[f"pts{view}"] = np.where(hit[..., None], pts, 0).astype(np.float32)
        sample[f"valid{view}"] = hit
        sample[f"motion{view}"] = np.where(motion_valid[..., None], mot, 0).astype(np.float32)
        sample[f"motion_valid{view}"] = motion_valid
    return sample


def clip_seed(clip_id: str, seed: int) -> int:
    """Deterministic per-clip RNG seed (stable across processes, unlike hash())."""
    return zlib.crc32(f"{seed}:{clip_id}".encode())


def select_triplets(
    tracks: np.ndarray, clip_id: str, config: SampleConfig, counts: FilterCounts
) -> np.ndarray:
    """Apply the clip and pair filters; the triplets [M,3] worth building (counts updated)."""
    counts.clips_seen += 1
    num_frames = tracks.shape[1]
    if num_frames - 1 < config.min_gap:
        counts.clips_too_short += 1
        return np.zeros((0, 3), np.int64)
    if moving_fraction(tracks, config.moving_threshold_m) < config.min_moving_fraction:
        counts.clips_static += 1
        return np.zeros((0, 3), np.int64)
    rng = np.random.default_rng(clip_seed(clip_id, config.seed))
    triplets = draw_triplets(num_frames, config.pairs_per_clip, rng, config.min_gap, config.max_gap)
    seen = np.isfinite(tracks).all(axis=-1)  # [N,T]
    enough = np.array(
        [(seen[:, i] & seen[:, j] & seen[:, q]).sum() >= config.min_tracks for i, j, q in triplets],
        bool,
    )
    counts.pairs_drawn += len(triplets)
    counts.pairs_few_tracks += int((~enough).sum())
    return triplets[enough] if len(triplets) else triplets


def read_left_frames(
    record: ClipRecord, videos_uri: str = "", rectified_uri: str = "", dense_root: str = ""
) -> np.ndarray:
    """Left rectified frames [T,S,S,3] uint8: the engine's dense outputs when `dense_root` (an
    engine output run with `--dense`) has them for this clip — no re-rectification — else
    rectified from the clip's raw video in `<videos>`, or the first T frames of
    `<rectified>/<clip_id>-left_rectified.mp4` (also `<rectified>/<clip_id>/…`).
    """
    if dense_root and fs.exists(dense_file(dense_root, record.name, "left.mp4")):
        frames = read_dense(dense_root, record.name, ("left",))["left"]
        if len(frames) < record.num_frames:
            raise ValueError(
                f"clip {record.name!r}: dense left.mp4 has {len(frames)} frames, "
                f"the clip {record.num_frames}"
            )
        return frames[: record.num_frames]
    if videos_uri:
        video = find_raw_video(videos_uri, record, "samples")
        return np.stack([left for left, _ in iter_rectified(record, video)])
    if not rectified_uri:
        raise ValueError("give a raw video folder or a rectified video folder")
    left_uri, _ = find_rectified_videos(rectified_uri, record.name)
    return decode_first_frames(left_uri, record.num_frames, record.name, "samples")


def clip_samples(
    npz_uri: str,
    videos_uri: str = "",
    rectified_uri: str = "",
    config: SampleConfig = SampleConfig(),
    counts: FilterCounts | None = None,
) -> Iterator[dict[str, Any]]:
    """Samples of one clip (the `build_sample` dict plus `clip_id`), after the filters.

    A clip that cannot be read (corrupt npz or video, frames missing) yields nothing: it is
    counted in `counts.clips_failed` / `counts.failures` and logged, and the caller's training
    or evaluation goes on, as the engine does with a bad clip. All samples of a clip are built
    before the first is yielded, so a clip counts entirely or not at all.
    """
    counts = counts if counts is not None else FilterCounts()
    clip_id = npz_stem(npz_uri)
    try:
        record = read_clip(npz_uri, extras=(VIDEO_FORMAT_EXTRA,))  # release members + format only
        clip_id = record.name
        tracks = record.dense_tracks()
        triplets = select_triplets(tracks, record.name, config, counts)
        counts.per_clip[record.name] = len(triplets)
        if not len(triplets):
            return
        frames = read_left_frames(record, videos_uri, rectified_uri, output_root_of_npz(npz_uri))
        world2camera = record.world2camera()
        samples = []
        for triplet in triplets:
            i, j, _ = triplet
            sample = build_sample(
                frames[i],
                frames[j],
                tracks,
                world2camera,
                triplet,
                config.image_size,
                config.hfov_deg,
            )
            sample["clip_id"] = record.name
            samples.append(sample)
    except Exception as error:  # one bad clip must not stop training or evaluation
        counts.clips_failed += 1
        counts.failures[clip_id] = f"{type(error).__name__}: {str(error)[:500]}"
        counts.per_clip[clip_id] = 0
        log.warning("dynadust3r samples: clip %r skipped: %s", clip_id, counts.failures[clip_id])
        return
    counts.samples += len(samples)
    yield from samples


def iter_samples(
    npz_uri: str,
    videos_uri: str = "",
    rectified_uri: str = "",
    config: SampleConfig = SampleConfig(),
    limit: int | None = None,
    counts: FilterCounts | None = None,
) -> Iterator[dict[str, Any]]:
    """Plain-Python samples of every clip under `npz_uri` (folder or glob), `limit` clips at most."""
    for uri in fs.list_files(npz_uri, ".npz")[:limit]:
        yield from clip_samples(uri, videos_uri, rectified_uri, config, counts)


def _clip_rows(row: dict[str, Any], config: SampleConfig) -> list[dict[str, Any]]:
    counts = FilterCounts()
    rows = list(
        clip_samples(row["npz_uri"], row["videos_uri"], row["rectified_uri"], config, counts)
    )
    log.info("dynadust3r samples %s: %s", row["npz_uri"], counts.as_dict())
    return rows


def read_samples(
    npz_uri: str,
    videos_uri: str = "",
    rectified_uri: str = "",
    config: SampleConfig = SampleConfig(),
    limit: int | None = None,
    num_cpus: float = 0.5,
):
    """A `ray.data.Dataset` of samples (flat numpy columns, one row per pair), one read task per
    clip, streamed. Drop `clip_id` (a string) before `iter_torch_batches`: see TRAIN_COLUMNS."""
    from s4d_ray.train_loop import clip_dataset

    extra = {"videos_uri": videos_uri, "rectified_uri": rectified_uri}
    rows_of = functools.partial(_clip_rows, config=config)
    return clip_dataset(npz_uri, limit, rows_of, extra, num_cpus)
