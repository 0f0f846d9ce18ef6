"""The tracking stage: dense 2D tracks of a pruned, jittered query grid, one contract for every backend.

`Tracker(...)(frames [T,H,W,3] uint8) -> Tracks2D(tracks [N,T,2] px (x,y), visible [N,T] bool,
query_frame [N] int)`. A query grid is laid on every `query_frame_interval`-th frame, queries
within `prune_radius` px of an earlier kept track visible there are dropped *before* tracking
(`s4d_ray.track.queries.track_with_pruning`), and the survivors are tracked over the whole clip.
Pixel i spans [i, i+1) (its centre is at i + 0.5), as in TAPIR and the rectified cameras.

Backends (`stages.base` registry; options: `TapirOptions`, `LucasKanadeOptions`, both with the
query grid's `QueryGridOptions`):
- `neural`: BootsTAP (TAPIR, pyramid level 1, extra convs, softmax temperature 10) at 512x512,
  frames in [-1, 1]; video features computed once per clip, query chunks tracked against them;
  visible = (1 - sigmoid(occlusion)) * (1 - sigmoid(expected_dist)) > 0.5 (tapnet's rule).
- `cpu`: pyramidal Lucas-Kanade chained frame to frame from each query frame, forwards and
  backwards, with forward-backward and patch-correlation checks; needs no weights (dev
  machines, CI).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import cv2
import numpy as np

from s4d_ray.models.device import autocast, autocast_dtype, check_precision
from s4d_ray.stages.base import ModelStage, at_least, check_frames, positive, register_backend
from s4d_ray.track.queries import SkipFn, TrackFn, track_with_pruning

if TYPE_CHECKING:
    from s4d_ray.models.tapir import TAPIR


@dataclass(frozen=True)
class QueryGridOptions:
    """The query grid of every tracking backend: a grid of `query_stride` px on every
    `query_frame_interval`-th frame, queries within `prune_radius` px of an earlier kept track
    dropped; `seed` fixes the grid's jitter (a call may pass its own, e.g. derived from the clip
    id). `skip_sky_queries`: the engine leaves out queries on sky at their query frame when the
    clip has labels (the drift filter drops those tracks; see `engine.clip_stages.track_points`).
    """

    query_stride: int = positive(8)
    query_frame_interval: int = positive(10)
    prune_radius: float = at_least(0, 1.0)
    seed: int = 0
    skip_sky_queries: bool = True


@dataclass(frozen=True)
class LucasKanadeOptions(QueryGridOptions):
    """Options of the `cpu` backend (`LucasKanadeBackend`): the query grid only. Its stride 8
    (64x64 grid on 512x512) tracks about a quarter as many points as Stereo4D's 4: Lucas-Kanade
    work grows with tracks x frames (512x512, 100 frames: ~35k tracks at ~1 frame/s on one busy
    core)."""


@dataclass(frozen=True)
class TapirOptions(QueryGridOptions):
    """Options of the `neural` backend (`TapirBackend`): the query grid at Stereo4D's stride 4
    (128x128 queries on 512x512); the BootsTAP checkpoint (any fsspec URI; None = the official
    file, `models.tapir.DEFAULT_URI`), where and in which arithmetic it runs, queries per chunk
    (None = fitted to free GPU memory, 64 on CPU), the square input size in px and BootsTAP's
    fused refinement (`TAPIR.set_fused_refinement`)."""

    query_stride: int = positive(4)
    weights_uri: str | None = None
    device: str = "cpu"
    precision: str = "fp32"
    query_chunk_size: int | None = positive(None)
    resolution: int = positive(512)
    fused_refinement: bool = True


class Tracks2D(NamedTuple):
    """The tracking stage's output. Rows are grouped by query frame (ascending), grid order within a frame."""

    tracks: np.ndarray
    """[N,T,2] float32 px (x, y); where not visible, the backend's last estimate."""
    visible: np.ndarray
    """[N,T] bool."""
    query_frame: np.ndarray
    """[N] int64 frame on which each track was queried."""


class LucasKanadeBackend:
    """Pyramidal Lucas-Kanade (OpenCV) chained frame to frame, with two consistency checks.

    From a query frame, points are tracked to each next frame (and, separately, each previous
    frame) from their position in the frame before. A step is accepted only if
    - OpenCV reports success both ways and the backward track of the new position lands within
      `fb_threshold` px of the old one (1 px, the tolerance of the stereo check and the query
      pruning radius; textured, unoccluded content round-trips within ~0.05 px);
    - the (2*ncc_radius+1)^2 patch around the new position correlates (zero-mean normalised
      cross-correlation) with the patch around the old one by at least `min_step_ncc`. A window
      that straddles an occluding edge follows the edge consistently both ways, so the
      forward-backward check alone lets such points slide onto the occluder; their own small
      patch then changes abruptly, which the correlation catches (true steps: median 0.999);
    - the new position is inside the image.
    The first failure loses the point for the rest of that direction: it stays at its last
    accepted position, marked invisible. Lucas-Kanade cannot re-find a point after an occlusion,
    and low-texture points (sky, blank walls) fail early. The 11 px window is smaller than
    OpenCV's customary 15-21 px: fewer windows straddle motion boundaries, and it is faster.
    """

    def __init__(
        self,
        window: int = 11,
        pyramid_levels: int = 3,
        fb_threshold: float = 1.0,
        min_step_ncc: float = 0.9,
        ncc_radius: int = 2,
    ) -> None:
        self.window = window
        self.pyramid_levels = pyramid_levels
        self.fb_threshold = fb_threshold
        self.min_step_ncc = min_step_ncc
        self.ncc_radius = ncc_radius
        self._criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 0.01)

    def provenance(self) -> dict[str, Any]:
        """The tracker and its settings (no weights)."""
        return {
            "model": "opencv-lucas-kanade",
            "library": f"opencv {cv2.__version__}",
            "config": {
                "window": self.window,
                "pyramid_levels": self.pyramid_levels,
                "fb_threshold": self.fb_threshold,
                "min_step_ncc": self.min_step_ncc,
                "ncc_radius": self.ncc_radius,
            },
            "weights_uri": None,
            "precision": "fp32",
        }

    def __call__(self, frames: np.ndarray) -> TrackFn:
        """Track function over one clip, frames [T,H,W,3] uint8 RGB."""
        gray = [cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in frames]
        gray_float = [image.astype(np.float32) for image in gray]

        def track(frame_index: int, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            num_frames = len(gray)
            tracks = np.empty((len(queries), num_frames, 2), dtype=np.float32)
            visible = np.zeros((len(queries), num_frames), dtype=bool)
            tracks[:, frame_index] = queries
            visible[:, frame_index] = True
            # OpenCV puts pixel centres at integers: shift by half a pixel both ways.
            start = queries.astype(np.float32) - 0.5
            start_patches = self._patches(gray_float[frame_index], start)
            for direction in (1, -1):
                position = start.copy()
                patches = start_patches.copy()
                alive = np.ones(len(queries), dtype=bool)
                previous = frame_index
                end = num_frames if direction > 0 else -1
                for t in range(frame_index + direction, end, direction):
                    index = np.flatnonzero(alive)
                    if index.size:
                        moved, ok = self._step(gray[previous], gray[t], position[index])
                        moved_patches = self._patches(gray_float[t], moved)
                        ok &= _ncc(patches[index], moved_patches) >= self.min_step_ncc
                        position[index[ok]] = moved[ok]
                        patches[index[ok]] = moved_patches[ok]
                        alive[index[~ok]] = False
                    tracks[:, t] = position + 0.5
                    visible[:, t] = alive
                    previous = t
            return tracks, visible

        return track

    def _step(
        self, image_from: np.ndarray, image_to: np.ndarray, points: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Move points [P,2] (OpenCV px) one frame; returns (moved [P,2], passed LK+FB+inside)."""
        params: dict[str, Any] = dict(  # Any: the cv2 stubs type each keyword
            winSize=(self.window, self.window),
            maxLevel=self.pyramid_levels,
            criteria=self._criteria,
        )
        points = np.ascontiguousarray(points, dtype=np.float32)
        moved, ok_forward, _ = cv2.calcOpticalFlowPyrLK(
            image_from, image_to, points, None, **params
        )
        back, ok_backward, _ = cv2.calcOpticalFlowPyrLK(image_to, image_from, moved, None, **params)
        height, width = image_to.shape
        round_trip = np.linalg.norm(back - points, axis=-1)
        inside = (
            (moved[:, 0] >= -0.5)
            & (moved[:, 0] < width - 0.5)
            & (moved[:, 1] >= -0.5)
            & (moved[:, 1] < height - 0.5)
        )
        accepted = (
            (ok_forward[:, 0] == 1)
            & (ok_backward[:, 0] == 1)
            & (round_trip <= self.fb_threshold)
            & inside
        )
        return moved, accepted

    def _patches(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Bilinear patches [P,(2r+1)^2] around points [P,2] (OpenCV px) of a float32 image."""
        offsets = np.arange(-self.ncc_radius, self.ncc_radius + 1, dtype=np.float32)
        offset_x, offset_y = (grid.ravel() for grid in np.meshgrid(offsets, offsets))
        parts = []
        # cv2.remap needs maps below 32767 rows.
        for chunk in range(0, len(points), 16384):
            block = points[chunk : chunk + 16384]
            map_x = block[:, 0:1] + offset_x[None]
            map_y = block[:, 1:2] + offset_y[None]
            parts.append(
                cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            )
        if not parts:
            return np.zeros((0, offset_x.size), dtype=np.float32)
        return np.concatenate(parts)


def _ncc(patches_a: np.ndarray, patches_b: np.ndarray) -> np.ndarray:
    """Zero-mean normalised cross-correlation of matching rows of [P,K] patches; [P] in [-1,1]."""
    a = patches_a - patches_a.mean(axis=1, keepdims=True)
    b = patches_b - patches_b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1) + 1e-6)


def tapir_query_chunk_size(memory_bytes: int, num_frames: int, precision: str = "fp32") -> int:
    """Queries per TAPIR chunk that fit in `memory_bytes` of free accelerator memory.

    The peak per query is the initial cost-volume head: per frame a 32x32 cost map (256x256
    initial resolution, stride-8 features) through a 16-channel conv, its ReLU, padding and a
    32-channel strided conv, ~48k values; counted as 64k values per query-frame for allocator
    slack. Half the free memory is left for everything else. Estimated, not yet measured on a GPU.
    """
    bytes_per_value = 4 if precision == "fp32" else 2
    per_query = 64 * 1024 * bytes_per_value * num_frames
    fitting = int(memory_bytes // 2 // per_query)
    return 2 ** int(math.log2(fitting)) if fitting >= 1 else 1


class TapirBackend:
    """BootsTAP/TAPIR: features once per clip, then each query frame's survivors in chunks."""

    def __init__(
        self,
        model: TAPIR,
        device: str = "cpu",
        precision: str = "fp32",
        query_chunk_size: int | None = None,
        resolution: int = 512,
        weights_uri: str | None = None,
    ) -> None:
        import torch

        check_precision(precision)
        self.weights_uri = weights_uri
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.query_chunk_size = query_chunk_size
        self.resolution = resolution

    def _autocast(self):
        return autocast(self.device.type, self.precision)

    def provenance(self) -> dict[str, Any]:
        """BootsTAP, its settings, the checkpoint (URI, size, sha256) and the precision."""
        import torch

        from s4d_ray.models.weights import weights_version

        model = self.model
        return {
            "model": "bootstap-tapir",
            "library": f"torch {torch.__version__}",
            "config": {
                "resolution": self.resolution,
                "pyramid_level": model.pyramid_level,
                "extra_convs": model.extra_convs is not None,
                "softmax_temperature": model.softmax_temperature,
                "num_pips_iter": model.num_pips_iter,
                "initial_resolution": list(model.initial_resolution),
                "fused_refinement": model.fused_refinement,
            },
            **(weights_version(self.weights_uri) if self.weights_uri else {"weights_uri": None}),
            "precision": self.precision,
        }

    def __call__(self, frames: np.ndarray) -> TrackFn:
        """Track function over one clip, frames [T,H,W,3] uint8 RGB; computes the features now."""
        import torch

        from s4d_ray.models.tapir import visible_from_logits

        num_frames, height, width = frames.shape[:3]
        size = self.resolution
        if (height, width) != (size, size):
            frames = np.stack(
                [cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) for frame in frames]
            )
        # Model coordinates are the input's scaled per axis (pixel edges stay on pixel edges).
        scale_xy = np.array([size / width, size / height], dtype=np.float32)
        video = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)[None]
        video = video.float() / 255.0 * 2.0 - 1.0
        with torch.inference_mode(), self._autocast():
            grids = self.model.get_feature_grids(video)
        del video
        compute_dtype = autocast_dtype(self.precision)
        if compute_dtype is not None:
            grids = grids.cast(compute_dtype)  # once per clip, not per chunk and pass
        chunk = self.query_chunk_size
        if chunk is None:
            chunk = 64
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                chunk = tapir_query_chunk_size(free, num_frames, self.precision)

        def track(frame_index: int, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            scaled = queries.astype(np.float32) * scale_xy
            query_points = np.concatenate(
                [np.full((len(queries), 1), frame_index, np.float32), scaled[:, ::-1]], axis=1
            )
            points = torch.from_numpy(query_points).to(self.device)[None]
            with torch.inference_mode(), self._autocast():
                out = self.model.track_with_grids(grids, points, query_chunk_size=chunk)
            tracks = out["tracks"][0].float().cpu().numpy() / scale_xy
            visible = visible_from_logits(
                out["occlusion"][0].float(), out["expected_dist"][0].float()
            )
            return tracks.astype(np.float32), visible.cpu().numpy()

        return track


@register_backend("tracking", "cpu", LucasKanadeOptions)
def _lucas_kanade(options: LucasKanadeOptions) -> LucasKanadeBackend:
    return LucasKanadeBackend()


def _tiny_tapir(folder: Path) -> dict[str, Any]:
    """`bootstapir_checkpoint_v2.pt` under `folder`: full-size BootsTAP with random weights, and
    options that run it small (64 px input, a 64 px query grid)."""
    import torch

    from s4d_ray.models.tapir import TAPIR

    torch.manual_seed(0)
    path = folder / "bootstapir_checkpoint_v2.pt"
    torch.save(TAPIR().state_dict(), path)
    return {"weights_uri": str(path), "query_stride": 64, "resolution": 64}


@register_backend("tracking", "neural", TapirOptions, tiny=_tiny_tapir)
def _tapir(options: TapirOptions) -> TapirBackend:
    from s4d_ray.models.tapir import DEFAULT_URI, load_bootstap

    weights_uri = options.weights_uri or DEFAULT_URI
    return TapirBackend(
        load_bootstap(weights_uri).set_fused_refinement(options.fused_refinement),
        options.device,
        options.precision,
        options.query_chunk_size,
        options.resolution,
        weights_uri,
    )


class Tracker(ModelStage, stage="tracking"):
    """The tracking stage's callable: `Tracker(backend, **options)` — backend 'neural' takes
    `TapirOptions`, 'cpu' `LucasKanadeOptions` —, built once per Ray actor and applied to one
    clip per call."""

    @property
    def skip_sky_queries(self) -> bool:
        """Whether the engine leaves out queries on sky (`QueryGridOptions.skip_sky_queries`)."""
        return bool(self.options.skip_sky_queries)

    def describe(self) -> dict[str, Any]:
        """The backend's provenance, its config extended by the query grid."""
        provenance = super().describe()
        grid = self.options
        provenance["config"] = {
            **provenance["config"],
            "query_stride": grid.query_stride,
            "query_frame_interval": grid.query_frame_interval,
            "prune_radius": grid.prune_radius,
            "skip_sky_queries": grid.skip_sky_queries,
        }
        return provenance

    def __call__(
        self,
        frames: np.ndarray,
        seed: int | None = None,
        skip_fn: SkipFn | None = None,
        counts: dict[str, int] | None = None,
    ) -> Tracks2D:
        """Tracks of one clip, frames [T,H,W,3] uint8 RGB. `skip_fn` leaves out queries whose
        tracks a filter surely drops; `counts` receives the query bookkeeping (both as in
        `track_with_pruning`)."""
        check_frames(frames)
        num_frames, height, width = frames.shape[:3]
        grid = self.options
        rng = np.random.default_rng(grid.seed if seed is None else seed)
        tracks, visible, query_frame = track_with_pruning(
            self.backend(frames),
            num_frames,
            height,
            width,
            stride=grid.query_stride,
            frame_interval=grid.query_frame_interval,
            radius=grid.prune_radius,
            rng=rng,
            skip_fn=skip_fn,
            counts=counts,
        )
        return Tracks2D(tracks, visible, query_frame)
