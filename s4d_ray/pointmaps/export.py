"""`s4d export-pointmaps`: engine outputs with dense outputs → Sora3R-style 4D pointmap training
windows, as WebDataset tar shards written by Ray Data (`write_webdataset`).

Per clip (OUTPUT/npz/<clip_id>.npz + OUTPUT/dense/<clip_id>/), windows of `frames` frames
(Sora3R: 4k + 1, default 17) every `stride` frames, resampled to `size`² (same field of view,
K scaled). Each sample, key `<clip_id>_<first_frame:06d>`:

    rgb.mp4            the window's left frames, H.264 (crf 18)
    depth.npy          float16 [T,H,W] m, 0 = invalid
    mask.npy           bool [T,H,W] (= depth > 0)
    intrinsics.npy     float32 [3,3] px (pixel centres at +0.5)
    camera2world.npy   float32 [T,4,4] relative to the window's first camera (first = I)
    meta.json          clip, frames, timestamps, size, scale, valid fraction, quality checks

Windows whose valid-pixel fraction is below `min_valid` (by default the clip's stereo backend's,
`MIN_VALID_BY_BACKEND`) are dropped and counted; a clip shorter
than one window and a clip's tail that fills no window are counted. Clips without dense
outputs, with a corrupt or inconsistent dense file or npz, become failure rows naming the clip
and stage; the rest is exported.

Layout under the export URI:

    URI/shards/<run_id>_<task:06d>.tar     the samples (Ray Data write tasks)
    URI/reports/<clip_id>.json             per clip: status, windows, drops, quality (atomic)
    URI/runs/<run_id>.json                 the run's commit: its clips and shards
    URI/failures/failures-all.parquet      clips whose latest attempt failed
    URI/summary.json                       counts, quality summary, windows/s, bytes/window

Resume: a clip is done once a committed run lists it; a re-run skips those. Shards of a run
that never committed (killed) are deleted before the next run writes, so no sample is ever in
two shards. One run at a time per export folder (the engine's output lease, `io.lease`).
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from s4d_ray.errors import InputError
from s4d_ray.io import fs
from s4d_ray.io.clip_io import read_clip
from s4d_ray.io.dense import dense_clip_ids, encode_frames, read_dense
from s4d_ray.io.lease import OutputLease
from s4d_ray.io.overlap import check_output
from s4d_ray.io.writer import ClipFailure, read_failures, write_failures
from s4d_ray.pointmaps.geometry import relative_poses, resize_depth, resize_frames, scale_intrinsics
from s4d_ray.pointmaps.quality import window_quality

log = logging.getLogger(__name__)

SHARDS_DIR, REPORTS_DIR, RUNS_DIR, FAILURES_DIR = "shards", "reports", "runs", "failures"
SAMPLE_FILES = (
    "rgb.mp4",
    "depth.npy",
    "mask.npy",
    "intrinsics.npy",
    "camera2world.npy",
    "meta.json",
)
QUALITY_KEYS = (
    "valid_fraction",
    "pose_ate_m",
    "pose_rotation_deg",
    "consistency_rel_median",
    "near_far_ratio",
)


MIN_VALID_BY_BACKEND = {"neural": 0.7, "cpu": 0.25}
"""Default minimum valid-depth fraction of a kept window, by the stereo backend that made the
clip's depth (`models.stereo.backend` in its metadata; unknown: the neural figure). SEA-RAFT
gives depth almost everywhere; SGBM gives none in its left band (`num_disparities` columns)
and on textureless surfaces: the synthetic demo's windows are 48–52 % valid, the test suite's
12-frame clips 30 %, and 32 % was seen on a 200-frame clip, so 0.7 would drop every window the
CPU path makes."""


@dataclass(frozen=True)
class ExportConfig:
    """Window length (4k + 1 frames), stride (0 = the window length: no overlap), output size
    (px, square, even) and the minimum valid-pixel fraction of a kept window (None: by the
    clip's stereo backend, `MIN_VALID_BY_BACKEND`)."""

    frames: int = 17
    stride: int = 0
    size: int = 512
    min_valid: float | None = None

    def __post_init__(self) -> None:
        if self.frames < 5 or (self.frames - 1) % 4:
            raise InputError(
                f"--frames must be 4k + 1 with k ≥ 1 (5, 9, 13, 17, ...), got {self.frames}"
            )
        if self.stride < 0:
            raise InputError(f"--stride must be ≥ 0 (0 = --frames), got {self.stride}")
        if self.size < 16 or self.size % 2:
            raise InputError(f"--size must be even and ≥ 16, got {self.size}")
        if self.min_valid is not None and not 0.0 <= self.min_valid <= 1.0:
            raise InputError(f"--min-valid must be in [0, 1], got {self.min_valid}")

    @property
    def step(self) -> int:
        return self.stride or self.frames

    def min_valid_for(self, metadata: dict[str, Any]) -> float:
        """The threshold for a clip with this engine `metadata`: the configured one, else its
        stereo backend's default."""
        if self.min_valid is not None:
            return self.min_valid
        backend = metadata.get("models", {}).get("stereo", {}).get("backend")
        return MIN_VALID_BY_BACKEND.get(backend, MIN_VALID_BY_BACKEND["neural"])


def window_starts(num_frames: int, frames: int, step: int) -> list[int]:
    """First frames of the windows `frames` long, `step` apart, that fit in the clip."""
    return list(range(0, num_frames - frames + 1, step)) if num_frames >= frames else []


def npy_bytes(array: np.ndarray) -> bytes:
    """`.npy` file bytes of an array (never pickled)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def sample_key(clip_id: str, first_frame: int) -> str:
    return f"{clip_id}_{first_frame:06d}"


def clip_windows(
    input_root: str, clip_id: str, config: ExportConfig
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The samples of one clip (WebDataset rows: `__key__` + encoded members) and its report.

    Raises (DenseOutputError, ClipValidationError, ...) for a clip whose inputs are missing,
    corrupt or inconsistent; the caller turns that into a failure row.
    """
    from s4d_ray.io.writer import npz_uri

    record = read_clip(npz_uri(input_root, clip_id), extras=("metadata",))
    metadata = json.loads(str(record.extras.get("metadata", "{}")))
    min_valid = config.min_valid_for(metadata if isinstance(metadata, dict) else {})
    dense = read_dense(input_root, clip_id, ("left", "depth", "camera"))
    frames, depth, camera = dense["left"], dense["depth"], dense["camera"]
    num_frames = record.num_frames
    if depth.shape[0] != num_frames or len(frames) < num_frames:
        raise ValueError(
            f"clip {clip_id!r}: dense outputs have {depth.shape[0]} depth maps and "
            f"{len(frames)} frames, the npz {num_frames} frames"
        )
    if frames.shape[1:3] != depth.shape[1:]:
        raise ValueError(f"clip {clip_id!r}: frames {frames.shape[1:3]} vs depth {depth.shape[1:]}")
    source_k = np.asarray(camera["intrinsics"], np.float64)
    source_hw = depth.shape[1:]
    k = scale_intrinsics(source_k, source_hw, (config.size, config.size))
    starts = window_starts(num_frames, config.frames, config.step)
    report: dict[str, Any] = {
        "clip_id": clip_id,
        "num_frames": num_frames,
        "min_valid": min_valid,
        "windows": [],
        "dropped_low_valid": [],
        "too_short": not starts,
        "tail_frames_unused": (num_frames - (starts[-1] + config.frames)) if starts else num_frames,
    }
    samples = []
    for start in starts:
        window = slice(start, start + config.frames)
        window_depth = resize_depth(depth[window], config.size)
        mask = window_depth > 0
        key = sample_key(clip_id, start)
        valid_fraction = float(mask.mean())
        if valid_fraction < min_valid:
            report["dropped_low_valid"].append({"key": key, "valid_fraction": valid_fraction})
            continue
        poses = relative_poses(record.camera2world[window])
        quality = window_quality(window_depth, mask, k, poses)
        meta = {
            "clip_id": clip_id,
            "video_id": record.video_id,
            "first_frame": start,
            "frames": list(range(start, start + config.frames)),
            "timestamps_us": record.timestamps[window].tolist(),
            "size": config.size,
            "source_size": list(source_hw),
            "scale": config.size / source_hw[1],
            "hfov_deg": camera.get("hfov_deg"),
            "depth_unit": "m",
            "quality": quality,
        }
        samples.append(
            {
                "__key__": key,
                "rgb.mp4": encode_frames(resize_frames(frames[window], config.size)),
                "depth.npy": npy_bytes(window_depth.astype(np.float16)),
                "mask.npy": npy_bytes(mask),
                "intrinsics.npy": npy_bytes(k.astype(np.float32)),
                "camera2world.npy": npy_bytes(poses.astype(np.float32)),
                "meta.json": json.dumps(meta, sort_keys=True).encode(),
            }
        )
        report["windows"].append({"key": key, **{q: quality[q] for q in QUALITY_KEYS}})
    return samples, report


def report_uri(output: str, clip_id: str) -> str:
    return fs.join(output, REPORTS_DIR, f"{clip_id}.json")


def export_clip_rows(
    item: dict[str, Any], input_root: str, output: str, config: ExportConfig, run_id: str
) -> list[dict[str, Any]]:
    """Ray Data `flat_map` body: one clip → its samples; its report written beside the shards
    (a failure becomes a report with status `failed`, never an exception)."""
    clip_id = str(item["clip_id"])
    start = time.perf_counter()
    try:
        samples, report = clip_windows(input_root, clip_id, config)
        report["status"] = "done"
    except Exception as error:  # a bad clip must never take the job down
        samples = []
        report = {
            "clip_id": clip_id,
            "status": "failed",
            "stage": "export",
            "error_type": type(error).__name__,
            "message": (str(error) or repr(error))[:4000],
        }
    report["run_id"] = run_id
    report["seconds"] = round(time.perf_counter() - start, 4)
    with fs.open_atomic(report_uri(output, clip_id), "w") as f:
        f.write(json.dumps(report, sort_keys=True))
    return samples


@dataclass
class ExportSummary:
    """What an export run did (written as URI/summary.json)."""

    run_id: str = ""
    clips_done: int = 0
    clips_failed: int = 0
    clips_skipped: int = 0
    clips_too_short: int = 0
    failures_by_stage: dict[str, int] = field(default_factory=dict)
    windows_exported: int = 0
    windows_dropped_low_valid: int = 0
    tail_frames_unused: int = 0
    shard_bytes: int = 0
    bytes_per_window: float = 0.0
    wall_seconds: float = 0.0
    windows_per_second: float = 0.0
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def committed_runs(output: str) -> dict[str, dict[str, Any]]:
    """run_id → manifest of every committed run under the export URI."""
    runs = {}
    for uri in fs.list_files(fs.join(output, RUNS_DIR), ".json"):
        manifest = json.loads(fs.read_bytes(uri))
        runs[manifest["run_id"]] = manifest
    return runs


def remove_uncommitted_shards(output: str, runs: dict[str, dict[str, Any]]) -> list[str]:
    """Delete shards of runs that never committed (killed mid-write); return their URIs."""
    removed = []
    for uri in fs.list_files(fs.join(output, SHARDS_DIR), ".tar"):
        run_id = uri.replace("\\", "/").rsplit("/", 1)[-1].split("_", 1)[0]
        if run_id not in runs:
            filesystem, path = fs.filesystem(uri)
            filesystem.rm(path)
            removed.append(uri)
    return removed


def _filename_provider(run_id: str):
    from ray.data.datasource import FilenameProvider

    class RunShardNames(FilenameProvider):
        """`<run_id>_<task:06d>.tar`: one run's shards share its id (for the commit)."""

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"{run_id}_{task_index:06d}.tar"

        def get_filename_for_block(self, block, write_uuid, task_index, block_index) -> str:
            return f"{run_id}_{task_index:06d}_{block_index:06d}.tar"

    return RunShardNames()


def _quality_summary(reports: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in QUALITY_KEYS:
        values = np.array(
            [w[key] for r in reports for w in r.get("windows", []) if np.isfinite(w[key])]
        )
        if values.size:
            out[key] = {
                "median": float(np.median(values)),
                "p95": float(np.percentile(values, 95)),
                "max": float(values.max()),
            }
    return out


def export_pointmaps(
    input_root: str,
    output: str,
    config: ExportConfig = ExportConfig(),
    limit: int | None = None,
    num_cpus: float = 1.0,
) -> ExportSummary:
    """Export every not-yet-exported clip of the engine output `input_root` to `output` (see
    the module docstring); connects to Ray (or starts a local one). Returns the summary.

    One run per export folder: its lease (`io.lease`, as the engine's) is held throughout, so a
    second run fails with OutputBusyError instead of deleting the first one's shards."""
    check_output(output, {"--input": input_root})
    fs.makedirs(output)
    with OutputLease.acquire(output):
        return _export(input_root, output, config, limit, num_cpus)


def _export(
    input_root: str, output: str, config: ExportConfig, limit: int | None, num_cpus: float
) -> ExportSummary:
    import ray
    import ray.data

    from s4d_ray.engine.resume import completed_clip_ids

    start = time.perf_counter()
    engine_done = completed_clip_ids(input_root)
    if not engine_done:
        raise FileNotFoundError(
            f"no finished engine clips under {input_root!r} (npz + Parquet row)"
        )
    runs = committed_runs(output)
    removed = remove_uncommitted_shards(output, runs)
    if removed:
        log.info("removed %d shards of uncommitted runs", len(removed))
    exported = {clip for manifest in runs.values() for clip in manifest["clips"]}
    todo = sorted(engine_done - exported)[:limit]
    with_dense = dense_clip_ids(input_root)
    run_id = f"r{time.strftime('%Y%m%d%H%M%S')}{uuid.uuid4().hex[:6]}"
    summary = ExportSummary(
        run_id=run_id, clips_skipped=len(exported & engine_done), config=asdict(config)
    )
    failures = [
        ClipFailure(
            clip,
            "input",
            "DenseOutputError",
            f"clip {clip!r}: no dense outputs under {input_root!r} (run the engine with --dense)",
        )
        for clip in todo
        if clip not in with_dense
    ]
    work = [clip for clip in todo if clip in with_dense]
    reports: list[dict[str, Any]] = []
    if work:
        if not ray.is_initialized():
            ray.init()
        items = [{"clip_id": clip} for clip in work]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).flat_map(
            # Ray types `fn` as a one-argument callable, without the `fn_args` it is given
            export_clip_rows,  # type: ignore[arg-type]
            fn_args=(input_root, output, config, run_id),
            num_cpus=num_cpus,
        )
        ds.write_webdataset(
            fs.join(output, SHARDS_DIR),
            filename_provider=_filename_provider(run_id),
            encoder=None,
        )
        for clip in work:
            try:
                report = json.loads(fs.read_bytes(report_uri(output, clip)))
            except FileNotFoundError:
                report = {
                    "status": "failed",
                    "stage": "export",
                    "error_type": "MissingReport",
                    "message": "no report written",
                    "run_id": run_id,
                }
            if report.get("run_id") != run_id:
                report = {
                    "status": "failed",
                    "stage": "export",
                    "error_type": "StaleReport",
                    "message": f"report of run {report.get('run_id')}",
                    "run_id": run_id,
                }
            report["clip_id"] = clip
            reports.append(report)
    done = [r for r in reports if r["status"] == "done"]
    failures += [
        ClipFailure(r["clip_id"], r["stage"], r["error_type"], r["message"])
        for r in reports
        if r["status"] != "done"
    ]
    shards = [
        uri
        for uri in fs.list_files(fs.join(output, SHARDS_DIR), ".tar")
        if uri.replace("\\", "/").rsplit("/", 1)[-1].startswith(run_id + "_")
    ]
    summary.shard_bytes = sum(fs.filesystem(u)[0].size(fs.filesystem(u)[1]) for u in shards)
    manifest = {
        "run_id": run_id,
        "clips": {r["clip_id"]: len(r["windows"]) for r in done},
        "shards": [u.replace("\\", "/").rsplit("/", 1)[-1] for u in shards],
    }
    with fs.open_atomic(fs.join(output, RUNS_DIR, f"{run_id}.json"), "w") as f:
        f.write(json.dumps(manifest, sort_keys=True))
    summary.clips_done = len(done)
    summary.clips_failed = len(failures)
    summary.failures_by_stage = dict(Counter(f.stage for f in failures))
    summary.clips_too_short = sum(bool(r["too_short"]) for r in done)
    summary.windows_exported = sum(len(r["windows"]) for r in done)
    summary.windows_dropped_low_valid = sum(len(r["dropped_low_valid"]) for r in done)
    summary.tail_frames_unused = sum(
        int(r["tail_frames_unused"]) for r in done if not r["too_short"]
    )
    summary.bytes_per_window = round(summary.shard_bytes / max(summary.windows_exported, 1), 1)
    summary.quality = _quality_summary(done)
    summary.wall_seconds = round(time.perf_counter() - start, 3)
    summary.windows_per_second = round(summary.windows_exported / summary.wall_seconds, 3)
    _consolidate_failures(output, failures, exported | {r["clip_id"] for r in done})
    with fs.open_atomic(fs.join(output, "summary.json"), "w") as f:
        f.write(json.dumps(asdict(summary), indent=2, sort_keys=True))
    return summary


def _consolidate_failures(output: str, failures: list[ClipFailure], done: set[str]) -> None:
    """One failures table: earlier failures of clips still not exported, then this run's."""
    folder = fs.join(output, FAILURES_DIR)
    old = {f.clip_id: f for uri in fs.list_files(folder, ".parquet") for f in read_failures(uri)}
    old.update({f.clip_id: f for f in failures})
    keep = [f for clip, f in sorted(old.items()) if clip not in done]
    uri = fs.join(folder, "failures-all.parquet")
    if keep:
        write_failures(keep, output, "shard-all")
    elif fs.exists(uri):
        filesystem, path = fs.filesystem(uri)
        filesystem.rm(path)
