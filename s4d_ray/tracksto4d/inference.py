"""TracksTo4D on a whole clip: overlapping windows, Sim(3) stitching, npz + Parquet outputs.

A clip of T frames is cut into windows of at most `window` frames (default 50, what the model
was trained on) overlapping by `overlap` frames. Each window gets at most `max_tracks` tracks
(`select_tracks`: spread over the image, long-lived) and one forward pass. Window w is brought
into the gauge of the trajectory so far by the Sim(3) (Umeyama) that maps its estimates on the
shared frames — 3D points of tracks estimated in both, and camera centres — onto the earlier
ones; frames already placed keep their earlier estimate. The result is one camera trajectory
(camera→world, arbitrary global scale), per-track 3D points for every frame of every window the
track was chosen in, and a movement level per track (mean over its windows).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from s4d_ray.errors import InputError, StageError
from s4d_ray.geometry.pose_metrics import Similarity, umeyama
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, clip_id_from_uri, npz_stem, read_clip
from s4d_ray.io.overlap import check_output
from s4d_ray.io.writer import (
    ClipFailure,
    json_text,
    write_clip_npz,
    write_failures,
    write_parquet_shard,
)
from s4d_ray.models.device import autocast_dtype, check_precision
from s4d_ray.models.tracksto4d import TracksTo4D
from s4d_ray.tracksto4d.data import (
    ClipTracks,
    clip_tracks,
    frame_windows,
    network_input,
    select_tracks,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceConfig:
    """Window length and overlap (frames), tracks per window, track choice and arithmetic."""

    window: int = 50
    overlap: int = 10
    max_tracks: int = 1000
    min_visible: int = 10
    grid: int = 8
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse settings `frame_windows`/`select_tracks` cannot use, before any clip is read
        (a bad value would otherwise become one failure row per clip)."""
        if self.window < 2:
            raise InputError(f"window must be at least 2 frames, got {self.window}")
        if not 0 < self.overlap < self.window:
            raise InputError(
                f"overlap must be in [1, window - 1] = [1, {self.window - 1}] frames, "
                f"got {self.overlap}"
            )
        if self.max_tracks < 1:
            raise InputError(f"max_tracks must be at least 1, got {self.max_tracks}")
        if self.min_visible < 1 or self.grid < 1:
            raise InputError(
                f"min_visible and grid must be at least 1, got {self.min_visible}, {self.grid}"
            )
        check_precision(self.precision)


@dataclass
class ClipPrediction:
    """One clip's stitched estimate (arbitrary global scale; world = first window's gauge).

    camera2world [T,4,4]; tracks [M] indices of the clip tracks estimated; points [M,T,3]
    world (NaN where the track was in no chosen window); depth [M,T] camera z (NaN likewise);
    movement [M] (mean movement level over its windows); windows [(start, end)];
    stitch_scales [W] the scale each window was multiplied by.
    """

    clip_id: str
    camera2world: np.ndarray
    tracks: np.ndarray
    points: np.ndarray
    depth: np.ndarray
    movement: np.ndarray
    windows: list[tuple[int, int]]
    stitch_scales: list[float] = field(default_factory=list)
    seconds: float = 0.0


def run_window(
    model: TracksTo4D, net_input: np.ndarray, device: torch.device, precision: str = "fp32"
) -> dict[str, np.ndarray]:
    """One forward pass on `net_input [N,C,F]`: camera2world [F,4,4], points [N,F,3] world,
    depth [N,F] camera z, movement [N] (float64 numpy)."""
    dtype = autocast_dtype(check_precision(precision))
    tracks = torch.from_numpy(net_input)[None].to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = model(tracks)
    f = net_input.shape[-1]
    c2w = np.tile(np.eye(4), (f, 1, 1))
    c2w[:, :3, :3] = out["rotations"][0].double().cpu().numpy()
    c2w[:, :3, 3] = out["translations"][0].double().cpu().numpy()
    return {
        "camera2world": c2w,
        "points": out["points3d"][0].double().cpu().numpy().transpose(2, 0, 1),
        "depth": out["depths"][0].double().cpu().numpy().T,
        "movement": out["movement"][0].double().cpu().numpy(),
    }


def _apply(sim: Similarity, c2w: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return sim.apply_poses(c2w), sim.apply_points(points)


def stitch_alignment(
    placed_c2w: np.ndarray,
    placed_points: np.ndarray,
    window_c2w: np.ndarray,
    window_points: np.ndarray,
) -> Similarity:
    """Sim(3) mapping a window's gauge onto the placed one from shared frames.

    placed_*/window_* hold the same shared frames: c2w [S,4,4], points [M,S,3] (NaN where a
    side has no estimate). Points and camera centres are fitted together (Umeyama); with too
    few of them the first shared camera is matched rigidly.
    """
    both = np.isfinite(placed_points).all(-1) & np.isfinite(window_points).all(-1)
    source = np.concatenate([window_points[both], window_c2w[:, :3, 3]])
    target = np.concatenate([placed_points[both], placed_c2w[:, :3, 3]])
    spread = np.linalg.norm(source - source.mean(0), axis=1).max() if len(source) else 0.0
    if len(source) >= 4 and spread > 1e-9:
        return umeyama(source, target, with_scale=True)
    rel = placed_c2w[0] @ np.linalg.inv(window_c2w[0])
    return Similarity(rotation=rel[:3, :3], translation=rel[:3, 3], scale=1.0)


def predict_clip(
    model: TracksTo4D,
    tracks: ClipTracks,
    config: InferenceConfig = InferenceConfig(),
    device: torch.device | None = None,
) -> ClipPrediction:
    """Windows → track choice → forward passes → one stitched ClipPrediction (module doc)."""
    device = device or next(model.parameters()).device
    start_time = time.perf_counter()
    windows = frame_windows(tracks.num_frames, config.window, config.overlap)
    rng = np.random.default_rng(config.seed)
    normalized = tracks.normalized()
    chosen, outputs = [], []
    for s, e in windows:
        picked = select_tracks(
            tracks.pixels[:, s:e],
            tracks.visible[:, s:e],
            config.max_tracks,
            config.min_visible,
            config.grid,
            tracks.image_size,
            rng,
        )
        if picked.size == 0:
            raise ValueError(f"window [{s}, {e}) has no track seen in enough frames")
        net_input = network_input(
            normalized[picked, s:e], tracks.visible[picked, s:e], model.config.use_visible_input
        )
        chosen.append(picked)
        outputs.append(run_window(model, net_input, device, config.precision))
    prediction = stitch_windows(tracks.clip_id, tracks.num_frames, windows, chosen, outputs)
    prediction.seconds = time.perf_counter() - start_time
    return prediction


def stitch_windows(
    clip_id: str,
    num_frames: int,
    windows: list[tuple[int, int]],
    chosen: list[np.ndarray],
    outputs: list[dict[str, np.ndarray]],
) -> ClipPrediction:
    """One trajectory from per-window estimates (`run_window` dicts for tracks `chosen[w]` of
    window `windows[w]`), each window Sim(3)-aligned to the frames placed before it."""
    estimated = np.unique(np.concatenate(chosen))
    row_of = {int(t): i for i, t in enumerate(estimated)}
    m = estimated.size
    c2w = np.full((num_frames, 4, 4), np.nan)
    points = np.full((m, num_frames, 3), np.nan)
    depth = np.full((m, num_frames), np.nan)
    movement_sum, movement_count = np.zeros(m), np.zeros(m)
    placed = np.zeros(num_frames, bool)
    scales = []
    for (s, e), picked, out in zip(windows, chosen, outputs, strict=True):
        out = dict(out)
        rows = np.array([row_of[int(i)] for i in picked])
        shared = np.nonzero(placed[s:e])[0]
        if shared.size:
            sim = stitch_alignment(
                c2w[s + shared],
                points[rows][:, s + shared],
                out["camera2world"][shared],
                out["points"][:, shared],
            )
            out["camera2world"], out["points"] = _apply(sim, out["camera2world"], out["points"])
            out["depth"] = out["depth"] * sim.scale
            scales.append(float(sim.scale))
        else:
            scales.append(1.0)
        new = ~placed[s:e]
        c2w[s:e][new] = out["camera2world"][new]
        window_points = points[rows, s:e]  # earlier estimates of placed frames are kept
        fresh = ~np.isfinite(window_points).all(-1)
        window_points[fresh] = out["points"][fresh]
        points[rows, s:e] = window_points
        window_depth = depth[rows, s:e]
        window_depth[fresh] = out["depth"][fresh]
        depth[rows, s:e] = window_depth
        movement_sum[rows] += out["movement"]
        movement_count[rows] += 1
        placed[s:e] = True
    if not placed.all():
        raise ValueError(f"clip {clip_id!r}: windows do not cover all {num_frames} frames")
    return ClipPrediction(
        clip_id=clip_id,
        camera2world=c2w,
        tracks=estimated,
        points=points,
        depth=depth,
        movement=movement_sum / np.maximum(movement_count, 1),
        windows=windows,
        stitch_scales=scales,
    )


def prediction_record(
    source: ClipRecord, tracks: ClipTracks, prediction: ClipPrediction, metadata: dict[str, Any]
) -> ClipRecord:
    """A release-format record of the estimate: camera2world = predicted cameras, track points
    = predicted world points where the source point was visible; extras `movement` float32 [M],
    `source_track` int64 [M] (row in the input clip), `visibility` [M,T], `predicted_depth`
    float32 [M,T] (NaN where none), `metadata` JSON. Units are the model's (not metres)."""
    visible = tracks.visible[prediction.tracks] & np.isfinite(prediction.points).all(-1)
    sparse = ClipRecord.sparse_from_dense(np.nan_to_num(prediction.points), visible)
    record = ClipRecord(
        name=source.name,
        video_id=source.video_id,
        timestamps=source.timestamps,
        camera2world=prediction.camera2world[:, :3, :].astype(np.float32),
        rectified2rig=source.rectified2rig,
        fov_bounds=source.fov_bounds,
        **sparse,
        extras={
            "movement": prediction.movement.astype(np.float32),
            "source_track": prediction.tracks.astype(np.int64),
            "visibility": visible,
            "predicted_depth": prediction.depth.astype(np.float32),
            "metadata": json_text(
                {
                    **metadata,
                    "windows": [list(w) for w in prediction.windows],
                    "stitch_scales": prediction.stitch_scales,
                    "seconds": prediction.seconds,
                    "units": "arbitrary (TracksTo4D is up to scale)",
                }
            ),
        },
    )
    return record.validate()


def run_tracksto4d(
    checkpoint: str,
    npz: str,
    output: str,
    config: InferenceConfig = InferenceConfig(),
    device: str = "auto",
    model_config: str | None = None,
) -> dict[str, Any]:
    """`s4d tracksto4d`: every release npz at `npz` (file, folder or glob, any URI) →
    OUTPUT/npz/<clip>.npz + one OUTPUT/parquet shard; a clip that cannot be read or predicted
    becomes a row of OUTPUT/failures/ and the others go on (a StageError when none is left).
    Returns a summary dict."""
    from s4d_ray.models.device import pick_device
    from s4d_ray.models.tracksto4d import load_tracksto4d

    check_output(output, {"--npz": npz, "--checkpoint": checkpoint})
    uris = [npz] if npz.endswith(".npz") and fs.exists(npz) else fs.list_files(npz, ".npz")
    if not uris:
        raise FileNotFoundError(f"no .npz clip found at {npz!r}")
    torch_device = torch.device(pick_device(device))
    model = load_tracksto4d(checkpoint, config=model_config).to(torch_device)
    records, summary, failures = [], {}, []
    for uri in uris:
        try:
            clip_id = clip_id_from_uri(uri)
            source = read_clip(uri)
            tracks = clip_tracks(source)
            prediction = predict_clip(model, tracks, config, torch_device)
        except (StageError, ValueError, OSError) as e:  # bad clip: a failure row, go on
            message = e.message if isinstance(e, StageError) else str(e)
            failure = ClipFailure(npz_stem(uri)[:200], "tracksto4d", type(e).__name__, message)
            log.error("tracksto4d: clip %r failed: %s", failure.clip_id, message)
            failures.append(failure)
            continue
        record = prediction_record(
            source, tracks, prediction, {"checkpoint": checkpoint, "precision": config.precision}
        )
        write_clip_npz(record, output)
        records.append(record)
        summary[clip_id] = {
            "frames": tracks.num_frames,
            "tracks": int(prediction.tracks.size),
            "windows": len(prediction.windows),
            "seconds": round(prediction.seconds, 3),
        }
        log.info("tracksto4d: clip %s %s", clip_id, summary[clip_id])
    failures_file = write_failures(failures, output)
    if not records:  # nothing to write: the first failure is the command's error
        raise StageError(failures[0].clip_id, "tracksto4d", failures[0].message)
    shard = write_parquet_shard(records, output)
    return {"clips": summary, "failed": len(failures), "failures": failures_file, "parquet": shard}
