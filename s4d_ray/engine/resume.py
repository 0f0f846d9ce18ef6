"""Resume: which clips an output already holds, and the one failures table across runs.

A clip is complete when every output format the run writes holds it (`outputs`; the release
format: its npz exists *and* its row is in a Parquet shard). Complete clips are skipped, so a
re-run (after a kill, or with more inputs) does only what is missing and never writes a clip
twice (names are deterministic). Failed clips are retried on the next run;
`failures/failures-all.parquet` always lists the clips whose latest attempt failed.
"""

from __future__ import annotations

from s4d_ray.engine.config import PipelineConfig
from s4d_ray.engine.outputs import active_formats
from s4d_ray.io import fs
from s4d_ray.io.writer import FAILURES_DIR, ClipFailure, read_failures, write_failures

FAILURES_NAME = "shard-all"


def completed_clip_ids(output: str, config: PipelineConfig | None = None) -> set[str]:
    """Clips complete under `output` in every format a run with `config` writes (default
    config: the release format alone; with `dense`, a clip done without `--dense` is redone
    by a `--dense` run). One listing or dataset read per format, no call per clip."""
    formats = active_formats(config or PipelineConfig())
    done = formats[0].completed(output)
    for output_format in formats[1:]:
        done &= output_format.completed(output)
    return done


def consolidate_failures(
    output: str, run_failures: list[ClipFailure], completed: set[str]
) -> str | None:
    """One failures table: earlier failures of clips still not complete, replaced by this
    run's failure of the same clip; the per-run files it supersedes are removed."""
    folder = fs.join(output, FAILURES_DIR)
    old_files = fs.list_files(folder, ".parquet")
    by_clip = {f.clip_id: f for uri in old_files for f in read_failures(uri)}
    by_clip.update({f.clip_id: f for f in run_failures})
    keep = [f for clip_id, f in sorted(by_clip.items()) if clip_id not in completed]
    written = write_failures(keep, output, FAILURES_NAME)
    for uri in old_files:
        if uri != written:
            filesystem, path = fs.filesystem(uri)
            filesystem.rm(path)
    return written
