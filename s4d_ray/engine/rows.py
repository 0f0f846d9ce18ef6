"""The row protocol of the engine: a row is one clip, a dict of columns, and every stage
declares the columns it reads, adds and drops.

A stage's transform gets a `CheckedRow` view of its clip: reading a column the stage does not
declare in `reads` raises `ColumnContractError` naming clip, stage and column. After it
returns, the engine compares key sets (never arrays): a column written that is not in `adds`,
one dropped that is not in `drops`, or one of `adds` missing fails the clip the same way.
The engine then drops the stage's `drops`, so heavy arrays (the right eye's frames, the depth
maps) die as soon as they are used.

A clip that raises gets `error_stage`, `error_type` and `error_message` set, its `drops`
dropped and empty placeholders for its `adds` (every row of a dataset keeps one schema), and
every later stage passes it through untouched; nothing else in the job is lost. The engine
owns the input, error and bookkeeping columns (`ENGINE_COLUMNS`): every stage may read them
and write the error and bookkeeping ones without declaring them, and failure rows are not
checked.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from s4d_ray.errors import StageError
from s4d_ray.io.ids import validate_clip_id
from s4d_ray.io.writer import ClipFailure

Row = dict[str, Any]
RowT = TypeVar("RowT", bound=MutableMapping[str, Any])
Column = tuple[str, int]
"""A column's (dtype, ndim): enough to make the empty placeholder of a failed clip."""

INPUT_COLUMNS = ("clip_id", "npz_uri", "videos_root", "left_uri", "right_uri")
ERROR_COLUMNS = ("error_stage", "error_type", "error_message")
BOOKKEEPING_COLUMNS = ("timings", "metadata")
"""JSON text: seconds per stage; models, placement and statistics of the clip."""
ENGINE_WRITES = frozenset((*ERROR_COLUMNS, *BOOKKEEPING_COLUMNS))
"""Columns any stage may write without declaring them."""
ENGINE_COLUMNS = frozenset(("clip_id", *ENGINE_WRITES))
"""Columns any stage may read (and drop) without declaring them."""


@dataclass(frozen=True)
class Stage:
    """A named per-clip transform and its columns.

    `reads`: columns its transform reads; `adds`: columns it writes (new ones, or ones it
    replaces), each with (dtype, ndim) so a failed clip can get an empty placeholder;
    `drops`: columns removed after it (heavy arrays it is the last user of).
    """

    name: str
    reads: tuple[str, ...] = ()
    adds: dict[str, Column] = field(default_factory=dict)
    drops: tuple[str, ...] = ()


class ColumnContractError(StageError):
    """A stage read, wrote or dropped a column it does not declare (or left out one it adds)."""

    def __init__(self, clip_id: str, stage: str, column: str, what: str) -> None:
        self.column = column
        super().__init__(clip_id, stage, f"column {column!r}: {what}")


class CheckedRow(MutableMapping[str, Any]):
    """A stage's view of one clip row. Reading a column the stage does not declare raises
    ColumnContractError; writes and deletions go through to the row (`row`) and are checked
    after the stage (`check_columns`). `in`, iteration and `pop` do not count as reads."""

    __slots__ = ("row", "stage", "_readable")

    def __init__(self, row: Row, stage: Stage) -> None:
        self.row = row
        self.stage = stage
        self._readable = ENGINE_COLUMNS | set(stage.reads) | set(stage.adds)

    def __getitem__(self, column: str) -> Any:
        if column not in self._readable:
            raise ColumnContractError(
                str(self.row.get("clip_id")),
                self.stage.name,
                column,
                f"read, but not in the stage's `reads` {sorted(self.stage.reads)}",
            )
        return self.row[column]

    def __setitem__(self, column: str, value: Any) -> None:
        self.row[column] = value

    def __delitem__(self, column: str) -> None:
        del self.row[column]

    def __contains__(self, column: object) -> bool:
        return column in self.row

    def __iter__(self) -> Iterator[str]:
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)

    def pop(self, column: str, *default: Any) -> Any:
        return self.row.pop(column, *default)


def check_columns(stage: Stage, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Raise ColumnContractError for the first column `stage` wrote outside its `adds`
    (new, or a value that is not the same object as before), dropped outside its `drops`,
    or left out of its `adds`. Key sets and identities only: no array is compared."""
    clip_id = str(before.get("clip_id"))
    written = {k for k, v in after.items() if k not in before or v is not before[k]}
    for column in sorted(written - stage.adds.keys() - ENGINE_WRITES):
        what = "written, but not in the stage's `adds`"
        raise ColumnContractError(clip_id, stage.name, column, what)
    for column in sorted(before.keys() - after.keys() - set(stage.drops) - ENGINE_COLUMNS):
        what = "dropped, but not in the stage's `drops`"
        raise ColumnContractError(clip_id, stage.name, column, what)
    for column in sorted(stage.adds.keys() - after.keys()):
        what = "in the stage's `adds`, but not written"
        raise ColumnContractError(clip_id, stage.name, column, what)


def carried_columns(stages: Iterable[Stage]) -> tuple[str, ...]:
    """The columns a row carries after `stages` (inputs, plus what each adds, less what each
    drops), engine columns left out: what the last stage of a pipeline ends."""
    columns = dict.fromkeys(c for c in INPUT_COLUMNS if c not in ENGINE_COLUMNS)
    for stage in stages:
        columns.update(dict.fromkeys(stage.adds))
        for column in stage.drops:
            columns.pop(column, None)
    return tuple(columns)


def clip_spec(
    clip_id: str, npz_uri: str, videos_root: str = "", rectified: tuple[str, str] = ("", "")
) -> Row:
    """The input row of one clip: a validated id, its npz, and its raw-video folder or the
    URIs of its already rectified left/right videos."""
    return {
        "clip_id": validate_clip_id(clip_id),
        "npz_uri": npz_uri,
        "videos_root": videos_root,
        "left_uri": rectified[0],
        "right_uri": rectified[1],
        "error_stage": "",
        "error_type": "",
        "error_message": "",
        "timings": "{}",
        "metadata": "{}",
    }


def failed(row: Mapping[str, Any]) -> bool:
    """Whether the clip failed in some stage (its failure row)."""
    return bool(row.get("error_stage"))


def clip_failure(row: Mapping[str, Any]) -> ClipFailure:
    """The failures-table entry of a failed clip row (or of its summary row)."""
    return ClipFailure(
        str(row["clip_id"]),
        str(row["error_stage"]),
        str(row["error_type"]),
        str(row["error_message"]),
    )


def _placeholder(dtype: str, ndim: int) -> Any:
    if dtype == "str":
        return ""
    if dtype == "bytes":
        return b""
    return np.zeros((0,) * ndim, dtype=dtype)


def update_json(row: MutableMapping[str, Any], column: str, values: dict[str, Any]) -> None:
    """Merge `values` into the JSON object of `row[column]` (`timings`, `metadata`)."""
    merged = json.loads(row[column])
    merged.update(values)
    row[column] = json.dumps(merged, sort_keys=True)


def record_in_metadata(
    row: MutableMapping[str, Any], section: str, stage: str, value: dict[str, Any]
) -> None:
    """Put `value` under `<section>.<stage>` of the row's metadata JSON."""
    metadata = json.loads(row["metadata"])
    metadata.setdefault(section, {})[stage] = value
    row["metadata"] = json.dumps(metadata, sort_keys=True)


def record_placement(row: Row, stage: str, placement: dict[str, Any]) -> None:
    """Put where `stage` ran (node, worker, Ray GPU ids and share, CUDA_VISIBLE_DEVICES,
    device, CPU fallback; `runner.worker_placement`) under `placement.<stage>` of the row's
    metadata JSON, beside the models' provenance."""
    if "metadata" in row:
        record_in_metadata(row, "placement", stage, placement)


def pass_failed(row: RowT, stage: Stage) -> RowT:
    """A clip that failed earlier through `stage`: its `drops` dropped, placeholders for its
    `adds`, nothing run."""
    for column in stage.drops:
        row.pop(column, None)
    for column, (dtype, ndim) in stage.adds.items():
        row[column] = _placeholder(dtype, ndim)
    return row


def mark_failed(row: RowT, stage: Stage, error: BaseException) -> RowT:
    """Turn `row` into a failure record of `stage`: error columns set, heavy arrays dropped."""
    row["error_stage"] = stage.name
    row["error_type"] = type(error).__name__
    message = str(error) or repr(error)
    if not isinstance(error, (ValueError, OSError, RuntimeError)):
        message += "\n" + "".join(traceback.format_exception(error)[-3:])
    row["error_message"] = message[:4000]
    return pass_failed(row, stage)


def _restore_schema(row: Row, before: Mapping[str, Any]) -> Row:
    """`row` with the columns it had before a stage that failed midway: what the stage added
    is removed and what it dropped comes back, so a failure row has the schema of the others."""
    for column in row.keys() - before.keys():
        del row[column]
    for column in before.keys() - row.keys():
        row[column] = before[column]
    return row


def release_cuda_cache(error: BaseException) -> None:
    """After a CUDA out-of-memory error (the clip's failure row), hand the allocator's cached
    blocks back so the actor's next clip starts from a clean GPU instead of failing too."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()


def finish_clip(stage: Stage, before: Mapping[str, Any] | None, result: Mapping[str, Any]) -> Row:
    """The engine's side of a clip after `stage` returned `result` for it (`before`: a copy of
    its row going in; None when it had failed earlier and was passed through). A clip that
    came out done has its columns checked (a violation makes it a failure row of the stage)
    and its `drops` dropped; failure rows are the engine's and pass as they are."""
    row = result.row if isinstance(result, CheckedRow) else dict(result)
    if before is None or failed(row):
        return row
    try:
        check_columns(stage, before, row)
    except ColumnContractError as error:
        return mark_failed(_restore_schema(row, before), stage, error)
    for column in stage.drops:
        row.pop(column, None)
    return row


def run_stage(row: Row, stage: Stage, fn: Callable[[CheckedRow], Mapping[str, Any]]) -> Row:
    """Apply `fn` to a clip row (through its CheckedRow view) unless it already failed; time
    it; capture its failure; check its columns (`finish_clip`)."""
    if failed(row):
        return pass_failed(row, stage)
    before = dict(row)
    start = time.perf_counter()
    try:
        result = fn(CheckedRow(row, stage))
    except Exception as error:  # a bad clip must never take the job down
        release_cuda_cache(error)
        return mark_failed(_restore_schema(row, before), stage, error)
    row = finish_clip(stage, before, result)
    if not failed(row):
        update_json(row, "timings", {stage.name: round(time.perf_counter() - start, 4)})
    return row


def run_batch(
    rows: Sequence[Row],
    stage: Stage,
    fn: Callable[[list[MutableMapping[str, Any]]], Sequence[Mapping[str, Any]]],
) -> list[Row]:
    """Apply a batch transform (a reducer: one row out per row in, in order) to clip rows:
    clips not failed go in as CheckedRow views, failed ones as they are (the transform passes
    them through); each result is checked (`finish_clip`). The transform times its clips."""
    before = [None if failed(row) else dict(row) for row in rows]
    items: list[MutableMapping[str, Any]] = [
        row if failed(row) else CheckedRow(row, stage) for row in rows
    ]
    results = fn(items)
    if len(results) != len(rows):
        raise ValueError(
            f"stage {stage.name!r} returned {len(results)} rows for a batch of {len(rows)}"
        )
    return [finish_clip(stage, b, r) for b, r in zip(before, results, strict=True)]


def batch_to_rows(batch: Mapping[str, np.ndarray]) -> list[Row]:
    """Ray Data numpy batch (column → array over clips) → list of clip rows."""
    size = len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(size)]


def rows_to_batch(rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """List of clip rows → numpy batch; ragged arrays become object columns."""
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        column = np.empty(len(values), dtype=object)
        column[:] = values
        batch[key] = column
    return batch
