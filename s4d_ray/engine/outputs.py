"""The output formats of the write stage, registered in one place (`OUTPUT_FORMATS`).

An output format is a pair: `write(rows, root)` writes a batch of finished clip rows under an
output root and returns the clips it could not write (clip id -> error), and
`completed(root)` lists the clips it holds complete there. The write stage writes every
active format in registration order (a clip that one format cannot write is failed and not
handed to the next), and the resume scan counts a clip complete when every active format
says so. Adding a format = one `OutputFormat` here, with the columns its `write` reads.

- `release`: one npz per clip (release fields + our extras) and one Parquet shard per batch
  (`io.writer`); written last, so a clip in it has every other active format's files.
- `dense` (with `--dense`): the rectified frames, stereo depth and camera of each clip
  (`io.dense`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from s4d_ray.engine.config import PipelineConfig
from s4d_ray.geometry.camera import RectifiedCamera
from s4d_ray.io.clip_io import ClipRecord
from s4d_ray.io.dense import camera_json, dense_clip_ids, dense_paths, depth_shape, write_dense
from s4d_ray.io.writer import build_clip_record, release_clip_ids, write_records

ClipRows = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class OutputFormat:
    """One output format: its columns, how it writes a batch of clips, how it lists the
    complete ones, and whether a run with a given configuration writes it."""

    name: str
    reads: tuple[str, ...]
    write: Callable[[ClipRows, str], dict[str, Exception]]
    completed: Callable[[str], set[str]]
    enabled: Callable[[PipelineConfig], bool]


def _always(config: PipelineConfig) -> bool:
    return True


def _dense_enabled(config: PipelineConfig) -> bool:
    return config.dense


def _release_record(row: Mapping[str, Any]) -> ClipRecord:
    """The release record of a finished clip row (`dense_files` when the row carries dense
    outputs, which the dense format has written before)."""
    clip_id = str(row["clip_id"])
    return build_clip_record(
        name=clip_id,
        video_id=row["video_id"],
        timestamps=row["timestamps"],
        camera2world=row["camera2world"],
        rectified2rig=row["rectified2rig"],
        fov_bounds=row["fov_bounds"],
        tracks=np.nan_to_num(row["points_opt"]),
        track_mask=row["mask"],
        visibility=row["visible"],
        colours=row["colours"],
        motion=row["motion"],
        stage_timings=json.loads(row["timings"]),
        metadata=json.loads(row["metadata"]),
        dense_files=dense_paths(clip_id) if len(row["dense_depth"]) else None,
        video_format=row["video_format"],
    )


def write_release(rows: ClipRows, root: str) -> dict[str, Exception]:
    """The release format: an npz per clip, then one Parquet shard of the batch."""
    records, errors = [], {}
    for row in rows:
        try:
            records.append(_release_record(row))
        except Exception as error:  # one bad clip fails alone
            errors[str(row["clip_id"])] = error
    return errors | write_records(records, root)


def write_dense_rows(rows: ClipRows, root: str) -> dict[str, Exception]:
    """The dense format: each clip's encoded frames, depth and camera.json."""
    errors = {}
    for row in rows:
        clip_id = str(row["clip_id"])
        try:
            frames, _, width = depth_shape(row["dense_depth"], f"clip {clip_id!r}")
            camera = RectifiedCamera.from_json(row["camera"])
            info = camera_json(frames, width, camera.hfov_deg, camera.baseline_m)
            write_dense(
                root, clip_id, row["dense_left"], row["dense_right"], row["dense_depth"], info
            )
        except Exception as error:  # one bad clip fails alone
            errors[clip_id] = error
    return errors


RELEASE = OutputFormat(
    "release",
    reads=(
        "video_id",
        "timestamps",
        "camera2world",
        "rectified2rig",
        "fov_bounds",
        "video_format",
        "points_opt",
        "mask",
        "visible",
        "colours",
        "motion",
        "dense_depth",
    ),
    write=write_release,
    completed=release_clip_ids,
    enabled=_always,
)
DENSE = OutputFormat(
    "dense",
    reads=("camera", "dense_left", "dense_right", "dense_depth"),
    write=write_dense_rows,
    completed=dense_clip_ids,
    enabled=_dense_enabled,
)

OUTPUT_FORMATS: tuple[OutputFormat, ...] = (DENSE, RELEASE)
"""Every output format, in the order the write stage writes them (the release last)."""


def active_formats(config: PipelineConfig) -> tuple[OutputFormat, ...]:
    """The formats a run with `config` writes (and needs complete to skip a clip)."""
    return tuple(f for f in OUTPUT_FORMATS if f.enabled(config))


def format_columns() -> tuple[str, ...]:
    """Every column some output format reads: what the write stage reads."""
    return tuple(dict.fromkeys(c for f in OUTPUT_FORMATS for c in f.reads))
