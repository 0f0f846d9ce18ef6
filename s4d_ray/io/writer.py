"""The release output format: clips as release npz files and Parquet shards, and the failures
table; `write_records` writes a batch, `release_clip_ids` lists the complete clips.

Layout under an output root (any fsspec URI: local path, `gs://`, `memory://`):
    OUTPUT/npz/<clip_id>.npz              one release npz per clip (+ our extras)
    OUTPUT/parquet/shard-<hash>.parquet   one row per clip, same fields as columns
    OUTPUT/failures/failures-all.parquet  clip_id, stage, error_type, message (the engine
                                          consolidates into this one table after each run)
Every write is atomic (`fs.open_atomic`) and every name is a pure function of clip ids, so a
re-run overwrites its earlier output instead of adding a duplicate.

Our extras in each npz / row: `visibility` bool [N,T], `colours` uint8 [N,3] (query-point
colour), `motion` float16 [N,T] px (camera-free 2D motion), `stage_timings` and `metadata`
(JSON text in a 0-d unicode array: seconds per stage; the models, backends, weights hashes
and precisions of the stages (`models`), filter statistics).

Parquet columns: string fields (name, video_id, stage_timings, metadata) are string columns;
every array is a `large_list` of its row-major flattened values in its own dtype, with the
shapes of `FIELD_SHAPES` (T frames, N tracks, L = Σ track_lengths). The per-row shapes are
also stored as JSON in the `array_shapes` column, and `FIELD_SHAPES` in the schema metadata.
Beside them, per-clip quality figures as plain columns (`s4d_ray.io.qa.QA_COLUMNS`:
valid_depth_fraction, tracks_kept_fraction, median_depth_m, ...) to filter clips by.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, npz_stem, write_clip
from s4d_ray.io.qa import QA_COLUMNS, clip_qa

NPZ_DIR = "npz"
PARQUET_DIR = "parquet"
FAILURES_DIR = "failures"
SHAPES_COLUMN = "array_shapes"
SHAPES_METADATA_KEY = b"s4d_ray.field_shapes"
FAILURE_COLUMNS = ("clip_id", "stage", "error_type", "message")
_FLOAT16_MAX = float(np.finfo(np.float16).max)

FIELD_SHAPES = {
    "name": "str",
    "video_id": "str",
    "timestamps": "int64 [T] us",
    "camera2world": "float [T,3,4]",
    "track_lengths": "int64 [N]",
    "track_indices": "int64 [L]",
    "track_coordinates": "float32 [L,3] m",
    "rectified2rig": "float [2,3,3]",
    "fov_bounds": "float [4] deg",
    "visibility": "bool [N,T]",
    "colours": "uint8 [N,3]",
    "motion": "float16 [N,T] px",
    "stage_timings": "str (JSON: stage -> seconds)",
    "metadata": "str (JSON: model versions, backends)",
    "dense_files": "str (JSON: name -> dense file relative to OUTPUT; only with --dense)",
}


def json_text(value: Mapping[str, Any]) -> np.ndarray:
    """`value` as JSON (sorted keys) in a 0-d unicode array, storable without pickle."""
    return np.array(json.dumps(dict(value), sort_keys=True))


def build_clip_record(
    *,
    name: str,
    video_id: str,
    timestamps: np.ndarray,
    camera2world: np.ndarray,
    rectified2rig: np.ndarray,
    fov_bounds: np.ndarray,
    tracks: np.ndarray,
    track_mask: np.ndarray,
    visibility: np.ndarray,
    colours: np.ndarray,
    motion: np.ndarray,
    stage_timings: Mapping[str, float],
    metadata: Mapping[str, Any],
    dense_files: Mapping[str, str] | None = None,
    video_format: str = "",
) -> ClipRecord:
    """A validated release record with our extras.

    Args:
        tracks: [N,T,3] m world, stored where `track_mask [N,T]` is true.
        visibility: [N,T] bool. colours: [N,3] uint8. motion: [N,T] px (stored as float16).
        stage_timings: seconds per stage. metadata: model versions, backends (JSON-able).
        dense_files: with `--dense`, the clip's dense files relative to the output root
            (`io.dense`), stored as the JSON extra `dense_files`.
        video_format: the raw video's StereoFormat as JSON (`io.stereo_format`), stored as
            the extra `video_format` so tools that re-read the video read it the same way.
    """
    num_tracks, num_frames = np.shape(track_mask)
    expected = {
        "tracks": (np.shape(tracks), (num_tracks, num_frames, 3)),
        "visibility": (np.shape(visibility), (num_tracks, num_frames)),
        "colours": (np.shape(colours), (num_tracks, 3)),
        "motion": (np.shape(motion), (num_tracks, num_frames)),
        "timestamps": (np.shape(timestamps), (num_frames,)),
    }
    for field_name, (got, want) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"clip {name!r}: {field_name} has shape {got}, expected {want}")
    colours = np.asarray(colours)
    if colours.dtype.kind not in "iu" or colours.min(initial=0) < 0 or colours.max(initial=0) > 255:
        raise ValueError(
            f"clip {name!r}: colours must be integers in [0, 255], got {colours.dtype}"
        )
    sparse = ClipRecord.sparse_from_dense(np.asarray(tracks), np.asarray(track_mask, dtype=bool))
    stored_motion = np.minimum(np.asarray(motion, dtype=np.float64), _FLOAT16_MAX)
    record = ClipRecord(
        name=name,
        video_id=video_id,
        timestamps=np.asarray(timestamps, dtype=np.int64),
        camera2world=np.asarray(camera2world),
        rectified2rig=np.asarray(rectified2rig),
        fov_bounds=np.asarray(fov_bounds),
        **sparse,
        extras={
            "visibility": np.asarray(visibility, dtype=bool),
            "colours": colours.astype(np.uint8),
            "motion": stored_motion.astype(np.float16),
            "stage_timings": json_text({k: float(v) for k, v in stage_timings.items()}),
            "metadata": json_text(metadata),
            **({"dense_files": json_text(dense_files)} if dense_files else {}),
            **({"video_format": np.asarray(video_format)} if video_format else {}),
        },
    )
    return record.validate()


def npz_uri(output_root: str, clip_id: str) -> str:
    """Where a clip's npz goes: OUTPUT/npz/<clip_id>.npz."""
    return fs.join(output_root, NPZ_DIR, f"{clip_id}.npz")


def write_clip_npz(record: ClipRecord, output_root: str) -> str:
    """Write one record as OUTPUT/npz/<clip_id>.npz (atomic, overwrites); return its URI."""
    uri = npz_uri(output_root, record.validate().name)
    write_clip(record, uri)
    return uri


def shard_name(clip_ids: Iterable[str]) -> str:
    """Deterministic shard id of a set of clip ids (order-free): `shard-<16 hex>`."""
    digest = hashlib.sha256("\n".join(sorted(set(clip_ids))).encode()).hexdigest()
    return f"shard-{digest[:16]}"


def _is_text(array: np.ndarray) -> bool:
    return array.ndim == 0 and array.dtype.kind == "U"


def clips_to_table(records: Sequence[ClipRecord]) -> pa.Table:
    """One row per clip (sorted by name); see the module docstring for the columns."""
    if not records:
        raise ValueError("no clip records to tabulate")
    rows = [r.validate().to_arrays() for r in sorted(records, key=lambda r: r.name)]
    names = [str(row["name"]) for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate clip ids in one shard: {sorted(names)}")
    fields = list(rows[0])
    columns: dict[str, pa.Array] = {}
    for field_name in fields:
        arrays = []
        for row in rows:
            if field_name not in row or set(row) != set(fields):
                raise ValueError(
                    f"clip {str(row['name'])!r} has fields {sorted(row)}, expected {sorted(fields)}"
                )
            arrays.append(row[field_name])
        if all(_is_text(a) for a in arrays):
            columns[field_name] = pa.array([str(a) for a in arrays], type=pa.string())
            continue
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) != 1 or any(_is_text(a) for a in arrays):
            raise ValueError(f"field {field_name!r} has mixed types across clips: {dtypes}")
        flat = [a.reshape(-1) for a in arrays]
        offsets = np.concatenate([[0], np.cumsum([f.size for f in flat])]).astype(np.int64)
        values = pa.array(np.concatenate(flat), type=pa.from_numpy_dtype(dtypes.pop()))
        columns[field_name] = pa.LargeListArray.from_arrays(
            pa.array(offsets, type=pa.int64()), values
        )
    shapes = [
        json.dumps({k: list(v.shape) for k, v in row.items() if not _is_text(v)}) for row in rows
    ]
    columns[SHAPES_COLUMN] = pa.array(shapes, type=pa.string())
    qa = [clip_qa(r) for r in sorted(records, key=lambda r: r.name)]
    for name in QA_COLUMNS:  # per-clip quality figures, for filtering clips (s4d_ray.io.qa)
        if name in columns:
            raise ValueError(f"field {name!r} clashes with the QA column of that name")
        figures = [q[name] for q in qa]
        columns[name] = (
            pa.array(figures, type=pa.large_list(pa.int64()))
            if name == "depth_histogram"
            else pa.array(figures)
        )
    table = pa.table(columns)
    return table.replace_schema_metadata({SHAPES_METADATA_KEY: json.dumps(FIELD_SHAPES).encode()})


def table_to_clips(table: pa.Table) -> list[ClipRecord]:
    """Inverse of `clips_to_table`: validated records, arrays in their stored dtypes."""
    # clips_to_table writes the shapes as non-null strings
    shapes = [json.loads(cast(str, s)) for s in table.column(SHAPES_COLUMN).to_pylist()]
    rows: list[dict[str, np.ndarray]] = [{} for _ in range(table.num_rows)]
    for field_name in table.column_names:
        if field_name == SHAPES_COLUMN or field_name in QA_COLUMNS:
            continue
        column = table.column(field_name).combine_chunks()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for row, text in zip(rows, column.to_pylist(), strict=True):
                row[field_name] = np.array(text)
            continue
        # every other column is written as a LargeListArray (a ListArray reads the same way)
        assert isinstance(column, pa.ListArray | pa.LargeListArray), column.type
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)
        for i, row in enumerate(rows):
            flat = values[offsets[i] : offsets[i + 1]]
            row[field_name] = flat.reshape(shapes[i][field_name]).copy()
    return [ClipRecord.from_arrays(row, source=str(row.get("name", ""))) for row in rows]


def parquet_uri(output_root: str, shard_id: str) -> str:
    """Where a shard goes: OUTPUT/parquet/<shard_id>.parquet."""
    return fs.join(output_root, PARQUET_DIR, f"{shard_id}.parquet")


def write_parquet_shard(
    records: Sequence[ClipRecord], output_root: str, shard_id: str | None = None
) -> str:
    """Write records as one Parquet shard (atomic); the name defaults to `shard_name(ids)`."""
    table = clips_to_table(records)
    uri = parquet_uri(output_root, shard_id or shard_name(r.name for r in records))
    with fs.open_atomic(uri, "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=8)
    return uri


def write_records(records: Sequence[ClipRecord], output_root: str) -> dict[str, Exception]:
    """Write a batch of clips in the release format: one npz per record, then one Parquet shard
    (named by `shard_name` of the clips written) of every clip whose npz was written.

    Returns the clips whose npz could not be written (clip id -> error; they are not in the
    shard); a shard that cannot be written raises. Names are pure functions of the clip ids,
    so writing the same batch again overwrites instead of duplicating."""
    written: list[ClipRecord] = []
    errors: dict[str, Exception] = {}
    for record in records:
        try:
            write_clip_npz(record, output_root)
        except Exception as error:  # one clip that cannot be written fails alone
            errors[record.name] = error
            continue
        written.append(record)
    if written:
        write_parquet_shard(written, output_root)
    return errors


def _arrow_filesystem(filesystem: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """pyarrow's own filesystem for local paths (native, multi-threaded), else the fsspec one
    wrapped (gcsfs with its emulator and anonymous-access options, memory://)."""
    if isinstance(filesystem, LocalFileSystem):
        return pafs.LocalFileSystem()
    # pyarrow-stubs declare FSSpecHandler abstract; it implements every handler method
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))  # type: ignore[abstract]


SHARDS_PER_READ = 1000
"""Shards per pyarrow dataset read: one dataset keeps ~100 kB of metadata per fragment until
it is dropped, so 14,000 shards in one would peak at ~1.5 GB; 1,000 at a time stay ~0.3 GB
at the same speed (benchmarks/bench_startup.py)."""


def clip_ids_in_shards(folder: str) -> set[str]:
    """The `name` column of every Parquet shard in `folder`, read as pyarrow datasets.

    One listing, then pyarrow reads each shard's footer and name column chunk on its thread
    pool, `SHARDS_PER_READ` shards per dataset (no schema inference: the fragments are made
    from the listed paths directly).
    """
    filesystem, paths = fs.list_paths(folder, ".parquet")
    names: set[str] = set()
    if not paths:
        return names
    arrow_fs = _arrow_filesystem(filesystem)
    schema = pa.schema([("name", pa.string())])
    for start in range(0, len(paths), SHARDS_PER_READ):
        dataset = pads.FileSystemDataset.from_paths(
            paths[start : start + SHARDS_PER_READ],
            schema=schema,
            format=pads.ParquetFileFormat(),
            filesystem=arrow_fs,
        )
        column = dataset.to_table(columns=["name"]).column("name")
        names.update(name for name in column.to_pylist() if name is not None)  # no null ids
    return names


def release_clip_ids(output_root: str) -> set[str]:
    """Clips complete in the release format under `output_root`: an npz and a row in some
    Parquet shard (two listings and the shards' name columns read as datasets: 110,000 clips
    in 14,000 shards take ~11 s of CPU, see benchmarks/bench_startup)."""
    _, npz_paths = fs.list_paths(fs.join(output_root, NPZ_DIR), ".npz")
    return {npz_stem(p) for p in npz_paths} & clip_ids_in_shards(fs.join(output_root, PARQUET_DIR))


def _read_tables(uri: str) -> list[pa.Table]:
    """Parquet tables of a file, or of every `.parquet` file in a folder (sorted)."""
    filesystem, path = fs.filesystem(uri)
    files = [uri] if filesystem.isfile(path) else fs.list_files(uri, suffix=".parquet")
    tables = []
    for file_uri in files:
        file_fs, file_path = fs.filesystem(file_uri)
        try:
            with file_fs.open(file_path, "rb") as f:
                tables.append(pq.read_table(f))
        except (pa.ArrowException, OSError) as error:  # name the file, not '<Buffer>'
            raise ValueError(f"{file_uri}: not a readable Parquet file: {error}") from error
    return tables


def read_parquet_clips(uri: str) -> list[ClipRecord]:
    """Records from a Parquet shard file or a folder of shards, in file then row order."""
    return [record for table in _read_tables(uri) for record in table_to_clips(table)]


@dataclass(frozen=True)
class ClipFailure:
    """A clip that a stage could not process; every failure is written, never dropped."""

    clip_id: str
    stage: str
    error_type: str
    message: str


def failures_uri(output_root: str, shard_id: str) -> str:
    """Where a failures table goes: OUTPUT/failures/failures-<hash>.parquet."""
    return fs.join(output_root, FAILURES_DIR, f"failures-{shard_id.removeprefix('shard-')}.parquet")


def write_failures(
    failures: Sequence[ClipFailure], output_root: str, shard_id: str | None = None
) -> str | None:
    """Write failures as a Parquet table (atomic); None when there are none.

    The name defaults to `shard_name` of the failed clip ids, so a re-run overwrites.
    """
    if not failures:
        return None
    ordered = sorted(failures, key=lambda f: (f.clip_id, f.stage))
    table = pa.table(
        {col: pa.array([getattr(f, col) for f in ordered], pa.string()) for col in FAILURE_COLUMNS}
    )
    uri = failures_uri(output_root, shard_id or shard_name(f.clip_id for f in failures))
    with fs.open_atomic(uri, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    return uri


def read_failures(uri: str) -> list[ClipFailure]:
    """Failures from a table file or a folder of them."""
    return [
        ClipFailure(**row)
        for table in _read_tables(uri)
        for row in table.select(list(FAILURE_COLUMNS)).to_pylist()
    ]
