"""Per-clip stage transforms of the engine: dict rows in, dict rows out, no Ray inside.

A row is one clip (the row protocol, with its declared and checked columns, is `rows`); each
entry of the stage list (`stage_list`) names one of these transforms and declares the columns
it reads, adds and drops.

Columns (shapes per clip; T frames, S = the camera's size, 512 for the release, N tracks):
    clip_id, npz_uri, videos_root, left_uri, right_uri   str (inputs; unused URIs empty)
    error_stage, error_type, error_message, timings, metadata    str (timings/metadata JSON)
    video_id str; timestamps int64 [T] µs; camera2world [T,3,4]; rectified2rig [2,3,3];
    fov_bounds [4]; camera str (JSON `RectifiedCamera`: size px, hfov deg, baseline m);
    video_format str (JSON, empty for rectified inputs)    (decode)
    left, right uint8 [T,S,S,3]; dense_left, dense_right bytes (mp4 with `--dense`)  (decode)
    depth float32 [T,S,S] m, 0 = invalid                   (stereo; drops right)
    label_classes uint8 [2,T,S,S/8] sky/static bit planes, [0,0,0,0] when disabled (segmentation)
    tracks_2d float32 [N,T,2] px; visible bool [N,T]; query_frame int64 [N];
    point_classes uint8 [N,T] sky (1) / static (2) bits per track point, [N,0] when disabled
                                                           (tracking; drops label_classes)
    points float32 [N,T,3] m; valid bool [N,T]; motion float32 [N,T] px; colours uint8 [N,3];
    dense_depth bytes (with `--dense`)                     (lift; drops frames, depth, labels)
    points_opt float32 [N,T,3] m (NaN outside mask); mask bool [N,T]              (optimize)
    status, num_frames, num_tracks, track_counts (the summary row)               (write)
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from s4d_ray.engine.outputs import OutputFormat
from s4d_ray.engine.rows import (
    ERROR_COLUMNS,
    Row,
    Stage,
    clip_spec,
    failed,
    mark_failed,
    pass_failed,
    record_in_metadata,
    update_json,
)
from s4d_ray.errors import S4DError, StageError
from s4d_ray.geometry.camera import RELEASE_CAMERA, STEREO_BASELINE_M, RectifiedCamera, invert_poses
from s4d_ray.geometry.stereo_format import StereoFormat
from s4d_ray.io import fs
from s4d_ray.io.clip_io import MAX_NPZ_BYTES, ClipRecord, npz_stem, read_clip
from s4d_ray.io.dense import encode_depth, encode_frames
from s4d_ray.io.ids import validate_clip_id
from s4d_ray.io.rectify import RectifiedVideoIndex, rectify_clip
from s4d_ray.io.video import decode_first_frames
from s4d_ray.io.video_lookup import VIDEO_FORMAT_EXTRA, carried_format, find_raw_video
from s4d_ray.track.depth import depth_from_flow
from s4d_ray.track.drift_filter import (
    filter_point_classes,
    pack_label_classes,
    sample_point_classes,
    sky_at,
)
from s4d_ray.track.lift import camera_centers, lift_tracks, motion_displacement, query_colours

if TYPE_CHECKING:
    from s4d_ray.stages.segmentation import Segmenter
    from s4d_ray.stages.stereo import StereoMatcher
    from s4d_ray.stages.tracking import Tracker

ClipRow = MutableMapping[str, Any]
"""What a transform gets: a clip row (a `rows.CheckedRow` view when the engine runs it)."""


class TooFewTracksError(S4DError, ValueError):
    """A clip kept fewer valid tracks than the job's minimum (nothing worth writing)."""


RECORD_COLUMNS = {
    "video_id": ("str", 0),
    "timestamps": ("int64", 1),
    "camera2world": ("float32", 3),
    "rectified2rig": ("float32", 3),
    "fov_bounds": ("float32", 1),
    "camera": ("str", 0),
    "video_format": ("str", 0),
}
"""Release-record columns the decode stage adds (dtype, ndim), with the clip's camera."""

DENSE_FRAMES = {"dense_left": ("bytes", 0), "dense_right": ("bytes", 0)}
"""With `--dense`: the decode stage's rectified frames encoded as mp4 (`io.dense`), empty
otherwise. Encoded where the frames are made, so a dense run carries ~5 kB per frame to the
writer instead of 1.5 MB of raw stereo frames, and a run without `--dense` carries nothing."""
DENSE_DEPTH = {"dense_depth": ("bytes", 0)}
"""With `--dense`: the stereo depth encoded by the lift stage (its last user), empty otherwise."""


def record_model(row: ClipRow, stage: str, model: Any) -> None:
    """Put `model.provenance()` (backend, model, config, weights URI/bytes/sha256, precision)
    under `models.<stage>` of the row's metadata JSON: it lands in the npz and Parquet row."""
    record_in_metadata(row, "models", stage, model.provenance())


def camera_of(row: ClipRow) -> RectifiedCamera:
    """The clip's rectified camera (the `camera` column the decode stage wrote)."""
    return RectifiedCamera.from_json(row["camera"])


def clip_seed(clip_id: str) -> int:
    """Deterministic per-clip seed (query-grid jitter), stable across runs and machines."""
    return zlib.crc32(clip_id.encode())


# --- stage bodies ------------------------------------------------------------------------


def check_rectified_size(width: int, height: int, clip_id: str, camera: RectifiedCamera) -> None:
    """Rectified input videos must be the camera's square crops (the release's 512², 60°):
    depth, lifting and the outputs assume that camera, which no other size carries."""
    if (width, height) != (camera.size_px, camera.size_px):
        raise StageError(
            clip_id,
            "decode",
            f"rectified video is {width}x{height}, expected {camera.size_px}x{camera.size_px} "
            f"(the {camera.hfov_deg:g}° crops `s4d rectify` writes)",
        )


def decode_and_rectify(
    row: ClipRow, max_npz_bytes: int = MAX_NPZ_BYTES, dense: bool = False
) -> ClipRow:
    """Read the release npz (its release members only, at most `max_npz_bytes`), then rectify
    the raw VR180 video (or decode rectified mp4s) to the release's views with the video's own
    baseline (`camera`). With `dense`, also the frames as mp4 bytes (`dense_left`,
    `dense_right`; empty otherwise)."""
    clip_id = row["clip_id"]
    record = read_clip(row["npz_uri"], extras=(VIDEO_FORMAT_EXTRA,), max_bytes=max_npz_bytes)
    if record.name != clip_id:
        raise ValueError(f"clip {clip_id!r}: npz names itself {record.name!r}")
    fmt = carried_format(record)
    if row["videos_root"]:
        video = find_raw_video(row["videos_root"], record, "decode")
        fmt = video.format
        camera = RELEASE_CAMERA.with_baseline(fmt.baseline_m)
        left, right = rectify_clip(record, video, camera.size_px, camera.hfov_deg)
        update_json(row, "metadata", {"video_format": fmt.to_json_dict()})
    else:
        camera = RELEASE_CAMERA.with_baseline(fmt.baseline_m if fmt else STEREO_BASELINE_M)
        left, right = (
            decode_first_frames(uri, record.num_frames, clip_id, "decode")
            for uri in (row["left_uri"], row["right_uri"])
        )
        if left.shape != right.shape:
            raise ValueError(
                f"clip {clip_id!r}: rectified videos differ in shape: {left.shape} vs {right.shape}"
            )
        check_rectified_size(left.shape[2], left.shape[1], clip_id, camera)
    return set_decoded(row, record, camera, fmt, left, right, dense)


def set_decoded(
    row: ClipRow,
    record: ClipRecord,
    camera: RectifiedCamera,
    fmt: StereoFormat | None,
    left: np.ndarray,
    right: np.ndarray,
    dense: bool = False,
) -> ClipRow:
    """Put what the decode stage adds on `row`: the record's columns, the clip's `camera`,
    the video's format (JSON, or empty) and its rectified frames (left, right [T,S,S,3]
    uint8); with `dense`, also the frames as mp4 bytes (`dense_left`, `dense_right`; empty
    otherwise). Shared by the decode stage and the own-video source, which makes the frames
    in its one pass over the video."""
    row.update(
        video_id=record.video_id,
        timestamps=record.timestamps.astype(np.int64),
        camera2world=record.camera2world.astype(np.float32),
        rectified2rig=record.rectified2rig.astype(np.float32),
        fov_bounds=np.asarray(record.fov_bounds, np.float32),
        camera=camera.to_json(),
        video_format=fmt.to_json() if fmt else "",
        left=left,
        right=right,
        dense_left=b"",
        dense_right=b"",
    )
    if dense:
        start = time.perf_counter()
        row.update(dense_left=encode_frames(left), dense_right=encode_frames(right))
        update_json(row, "metadata", {"dense_encode_s": round(time.perf_counter() - start, 4)})
    return row


def stereo_depth(row: ClipRow, matcher: StereoMatcher) -> ClipRow:
    """Stereo flow both ways → metric depth [T,S,S] with the clip's camera (0 = invalid);
    flows not kept."""
    flow_fwd, flow_bwd = matcher(row["left"], row["right"])
    depth, _ = depth_from_flow(flow_fwd, flow_bwd, camera_of(row))
    row["depth"] = depth
    record_model(row, "stereo", matcher)
    return row


def segment_classes(row: ClipRow, segmenter: Segmenter) -> ClipRow:
    """ADE20K labels of every frame, shipped as the two bit planes the drift filter and the
    tracker's query skipping read (`label_classes` [2,T,H,W/8] uint8: sky, static; [0,0,0,0]
    when segmentation is disabled). The label maps themselves never leave the actor."""
    labels = segmenter.segment(row["left"])
    if labels is None:
        row["label_classes"] = np.zeros((0, 0, 0, 0), np.uint8)
    else:
        row["label_classes"] = pack_label_classes(labels)
    record_model(row, "segmentation", segmenter)
    return row


def track_points(row: ClipRow, tracker: Tracker) -> ClipRow:
    """Dense 2D tracks of the left view, query pruning applied before tracking; queries on
    sky at their query frame are not tracked (the drift filter drops every track on sky at a
    visible frame) unless the tracker's `skip_sky_queries` is off. Adds `point_classes`
    [N,T] (sky/static bits at each track point, [N,0] without segmentation) and the query
    bookkeeping to the metadata."""
    packed = row["label_classes"]
    width = row["left"].shape[2]
    skip_fn = None
    if packed.size and getattr(tracker, "skip_sky_queries", False):

        def skip_fn(frame_index: int, queries: np.ndarray) -> np.ndarray:
            return sky_at(packed, frame_index, queries, width)

    counts: dict[str, int] = {}
    result = tracker(row["left"], seed=clip_seed(row["clip_id"]), skip_fn=skip_fn, counts=counts)
    tracks_2d = np.asarray(result.tracks, np.float32)
    row.update(
        tracks_2d=tracks_2d,
        visible=np.asarray(result.visible, bool),
        query_frame=np.asarray(result.query_frame, np.int64),
        point_classes=(
            sample_point_classes(packed, tracks_2d, width)
            if packed.size
            else np.zeros((len(tracks_2d), 0), np.uint8)
        ),
    )
    update_json(row, "metadata", {f"queries_{k}": v for k, v in counts.items()})
    record_model(row, "tracking", tracker)
    return row


def lift_and_filter(row: ClipRow, min_tracks: int = 1, dense: bool = False) -> ClipRow:
    """The lift stage: lift to 3D, motion displacement, drift filter; keep surviving tracks.
    With `dense`, also the depth maps encoded for the writer (`dense_depth`; empty otherwise)."""
    w2c = invert_poses(row["camera2world"])
    camera = camera_of(row)
    tracks_2d, visible = row["tracks_2d"], row["visible"]
    points, valid = lift_tracks(tracks_2d, visible, row["depth"], w2c, camera)
    num_tracks = len(tracks_2d)
    stats: dict[str, Any] = {
        "tracks_tracked": int(num_tracks),
        "valid_depth_fraction": round(float(np.mean(row["depth"] > 0)), 5),
    }
    keep = valid.any(axis=1)
    stats["tracks_dropped_no_depth"] = int((~keep).sum())  # no frame with valid depth
    stats["tracks_after_depth"] = int(keep.sum())
    # motion is per track: computed only for tracks that the other rules keep (exact)
    classes = row["point_classes"]
    if classes.shape[1]:
        _, before_motion = filter_point_classes(classes, visible, np.zeros(visible.shape))
        undecided = keep & ~before_motion["sky"]
        stats["tracks_after_sky"] = int(undecided.sum())
        undecided &= ~before_motion["boundary"]
        stats["tracks_after_boundary"] = int(undecided.sum())
    else:
        undecided = keep
    motion = np.zeros(visible.shape, np.float32)
    motion[undecided] = motion_displacement(points[undecided], valid[undecided], w2c, camera)
    if classes.shape[1]:
        semantic_keep, reasons = filter_point_classes(classes, visible, motion)
        keep &= semantic_keep
        stats.update({f"tracks_dropped_{k}": int(v.sum()) for k, v in reasons.items()})
        stats["tracks_after_drift"] = int(keep.sum())
        stats["drift_filter"] = "on"
    else:
        stats["drift_filter"] = "off"
    stats["tracks_kept"] = int(keep.sum())
    if keep.sum() < min_tracks:
        raise TooFewTracksError(
            f"clip {row['clip_id']!r}: {int(keep.sum())} valid tracks after filtering, "
            f"fewer than the minimum {min_tracks} (of {num_tracks} tracked)"
        )
    query_frame = row["query_frame"][keep]
    query_xy = tracks_2d[keep][np.arange(keep.sum()), query_frame]
    query_points = np.stack([query_frame, query_xy[:, 1], query_xy[:, 0]], axis=-1)
    row.update(
        points=points[keep].astype(np.float32),
        valid=valid[keep],
        visible=visible[keep],
        motion=motion[keep].astype(np.float32),
        colours=query_colours(row["left"], query_points),
        dense_depth=b"",
    )
    if dense:
        start = time.perf_counter()
        row["dense_depth"] = encode_depth(row["depth"])
        seconds = json.loads(row["metadata"]).get("dense_encode_s", 0.0)
        seconds += time.perf_counter() - start  # decode's frames + lift's depth
        update_json(row, "metadata", {"dense_encode_s": round(seconds, 4)})
    update_json(row, "metadata", stats)
    return row


PER_TRACK_COLUMNS = ("visible", "motion", "colours")
"""Columns indexed by track that travel from lift to write beside the optimiser's input."""


def optimize_rows(
    rows: Sequence[ClipRow],
    optimize_clips: Callable[..., list],
    stage: Stage,
    min_tracks: int = 1,
) -> list[ClipRow]:
    """The optimize stage for a batch of clips in one batched optimiser call (failed rows pass through).

    If the batched call fails, clips are retried one by one so one bad clip fails alone.
    `stage` is the optimiser's entry of the stage list (its columns and name). Tracks that the
    optimiser's mask empties are dropped; a clip left with fewer than `min_tracks` fails.
    """
    live = [i for i, row in enumerate(rows) if not failed(row)]

    def inputs(row: ClipRow) -> tuple:
        w2c = invert_poses(row["camera2world"])
        return (row["points"], row["valid"], camera_centers(w2c), row["motion"])

    start = time.perf_counter()
    try:
        results = optimize_clips([inputs(rows[i]) for i in live])
        per_clip = (time.perf_counter() - start) / max(len(live), 1)
        outcomes = {i: (result, per_clip) for i, result in zip(live, results, strict=True)}
    except Exception:
        outcomes = {}
        for i in live:
            one = time.perf_counter()
            try:
                outcomes[i] = (optimize_clips([inputs(rows[i])])[0], time.perf_counter() - one)
            except Exception as error:
                outcomes[i] = (error, 0.0)
    out: list[ClipRow] = []
    for i, row in enumerate(rows):
        if i not in outcomes:
            out.append(pass_failed(row, stage))
            continue
        result, seconds = outcomes[i]
        if isinstance(result, BaseException):
            out.append(mark_failed(row, stage, result))
            continue
        points_opt, mask = result
        mask = mask & np.isfinite(points_opt).all(-1)
        # the optimiser's mask (visibility with gaps dilated) empties short tracks: a track
        # with no point left is not data, so it is not written
        kept = mask.any(axis=1)
        if kept.sum() < min_tracks:
            too_few = TooFewTracksError(
                f"clip {row['clip_id']!r}: {int(kept.sum())} tracks keep a point under the "
                f"optimiser's mask, fewer than the minimum {min_tracks}"
            )
            out.append(mark_failed(row, stage, too_few))
            continue
        for column in PER_TRACK_COLUMNS:
            row[column] = row[column][kept]
        row["points_opt"], row["mask"] = points_opt[kept].astype(np.float32), mask[kept]
        update_json(row, "metadata", {"tracks_dropped_empty_after_mask": int((~kept).sum())})
        update_json(row, "timings", {stage.name: round(seconds, 4)})
        out.append(row)
    return out


def input_rows(
    npz: str,
    videos: str = "",
    rectified: str = "",
    limit: int | None = None,
    skip: frozenset[str] = frozenset(),
) -> tuple[list[Row], list[Row]]:
    """Clip rows for every release npz under `npz` (folder or glob), and rows that failed early.

    Raw videos are looked up as `<videos>/<video_id>.mp4` when the clip is decoded; with
    `rectified`, as `<rectified>/<clip_id>/<clip_id>-{left,right}_rectified.mp4` or directly
    `<rectified>/<clip_id>-{left,right}_rectified.mp4`. File names that are not valid clip ids
    become failure rows (stage `input`) instead of paths. Clips in `skip` are left out. No npz
    at all is an error (usually a wrong path), not an empty job.
    """
    uris = fs.list_files(npz, ".npz")
    if not uris:
        raise FileNotFoundError(
            f"no .npz files under {npz!r} (a relative path resolves in the job's working dir; "
            "give an absolute path or a URI)"
        )
    rows, rejected = [], []
    rectified_videos = RectifiedVideoIndex(rectified) if rectified else None
    for uri in uris:
        stem = npz_stem(uri)
        try:
            clip_id = validate_clip_id(stem)
        except ValueError as error:
            row = clip_spec("invalid_0", uri)
            row["clip_id"] = stem[:200]
            rejected.append(mark_failed(row, Stage("input"), error))
            continue
        if clip_id in skip:
            continue
        if rectified_videos is not None:
            rows.append(clip_spec(clip_id, uri, rectified=rectified_videos(clip_id)))
        else:
            rows.append(clip_spec(clip_id, uri, videos_root=videos))
        if limit is not None and len(rows) >= limit:
            break
    return rows, rejected


SUMMARY_COLUMNS = {
    "status": ("str", 0),
    "num_frames": ("int64", 0),
    "num_tracks": ("int64", 0),
    "track_counts": ("str", 0),
}
"""What the write stage adds: with the clip's id, error columns and timings, its summary row."""


def track_counts(row: ClipRow) -> dict[str, int]:
    """The clip's query and track bookkeeping from its metadata: `queries_*` (candidates,
    pruned, skipped, tracked, query_frames) and `tracks_*` (after each filter, dropped by
    each rule, kept); integers only."""
    metadata = json.loads(row.get("metadata") or "{}")
    return {
        k: v
        for k, v in metadata.items()
        if k.startswith(("queries_", "tracks_")) and isinstance(v, int)
    }


def write_rows(
    rows: Sequence[ClipRow], output_root: str, formats: Sequence[OutputFormat]
) -> list[Row]:
    """The write stage for a batch: each output format of `formats` (`outputs`) writes the
    finished clips in turn; a clip a format cannot write fails there and is not handed to the
    next. Returns one small summary row per clip (done or failed); heavy arrays end here.

    `write` in a clip's timings is its share of the batch's writing time (the npz, dense
    files and the Parquet shard together)."""
    write = Stage("write")
    live = [row for row in rows if not failed(row)]
    start = time.perf_counter()
    for output_format in formats:
        errors = output_format.write(live, output_root) if live else {}
        for row in live:
            if row["clip_id"] in errors:
                mark_failed(row, write, errors[row["clip_id"]])
        live = [row for row in live if not failed(row)]
    seconds = round((time.perf_counter() - start) / max(len(live), 1), 4)
    summaries = []
    for row in rows:
        done = not failed(row)
        if done:
            update_json(row, "timings", {"write": seconds})
        num_tracks, num_frames = row["mask"].shape if done else (0, 0)
        summaries.append(
            {
                "clip_id": row["clip_id"],
                "status": "done" if done else "failed",
                "num_frames": int(num_frames),
                "num_tracks": int(num_tracks),
                "track_counts": json.dumps(track_counts(row), sort_keys=True),
                "timings": row["timings"],
                **{k: row[k] for k in ERROR_COLUMNS},
            }
        )
    return summaries
