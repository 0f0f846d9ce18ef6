"""Stage contracts on real synthetic clips: a stage that reads, writes or drops a column it
does not declare fails its clip (in process and through the Ray Data graph), and a stage call
stuck in C code fails its clip while Ray replaces the worker that holds it."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from s4d_ray.engine import clip_stages
from s4d_ray.engine.clip_stages import ClipRow, input_rows
from s4d_ray.engine.config import PipelineConfig, config_from_dict
from s4d_ray.engine.runner import run_in_process
from s4d_ray.engine.stage_list import STAGE, STAGES, StageSpec
from tests.test_engine import ray_head  # noqa: F401 - the module's own Ray head

REPO = Path(__file__).resolve().parents[1]
STUCK_DIR_ENV = "S4D_TEST_STUCK_DIR"


def with_stage(spec: StageSpec) -> tuple[StageSpec, ...]:
    """The stage list with `spec` in place of the entry of the same name."""
    return tuple(spec if s.name == spec.name else s for s in STAGES)


def segment_and_keep_labels(row: ClipRow, segmenter) -> ClipRow:
    """The segmentation stage plus a column nobody declared."""
    row = clip_stages.segment_classes(row, segmenter)
    row["label_names"] = "sky,road"
    return row


def lift_without_depth() -> StageSpec:
    lift = STAGE["lift"]
    return dataclasses.replace(lift, reads=tuple(c for c in lift.reads if c != "depth"))


WRONG_DECLARATIONS = {
    # a copy of the lift entry that forgot one column it reads
    "reads": (lift_without_depth, "lift", "depth", "not in the stage's `reads`"),
    # a transform that writes one column more than its entry declares
    "adds": (
        lambda: dataclasses.replace(STAGE["segmentation"], process=segment_and_keep_labels),
        "segmentation",
        "label_names",
        "not in the stage's `adds`",
    ),
    # a reducer entry that forgot a column its transform replaces
    "reducer adds": (
        lambda: dataclasses.replace(
            STAGE["optimize"],
            adds={k: v for k, v in STAGE["optimize"].adds.items() if k != "colours"},
        ),
        "optimize",
        "colours",
        "not in the stage's `adds`",
    ),
}


def assert_contract_failure(summary: dict, clip_id: str, stage: str, column: str, what: str):
    assert summary["status"] == "failed", summary
    assert (summary["error_stage"], summary["error_type"]) == (stage, "ColumnContractError")
    message = summary["error_message"]
    assert clip_id in message and repr(stage) in message and repr(column) in message
    assert what in message


@pytest.mark.parametrize("case", sorted(WRONG_DECLARATIONS))
def test_a_stage_outside_its_declared_columns_fails_its_clip(case, synth_dir, tmp_path):
    make_spec, stage, column, what = WRONG_DECLARATIONS[case]
    rows, _ = input_rows(str(synth_dir / "npz"), str(synth_dir / "raw"), limit=1)
    (summary,) = run_in_process(
        rows, PipelineConfig(), str(tmp_path), stages=with_stage(make_spec())
    )
    assert_contract_failure(summary, rows[0]["clip_id"], stage, column, what)
    assert not list(tmp_path.glob("npz/*.npz"))


def init_ray(address: str, **env_vars: str) -> None:
    """This test process as a client of the module's head; its workers import the repo."""
    import ray

    ray.init(
        address=address,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **env_vars}},
        log_to_driver=False,
    )


@pytest.mark.slow
def test_the_ray_graph_checks_the_columns_too(ray_head, synth_dir, tmp_path):  # noqa: F811
    import ray

    from s4d_ray.engine.pipeline import build_dataset

    rows, _ = input_rows(str(synth_dir / "npz"), str(synth_dir / "raw"), limit=1)
    init_ray(ray_head["address"])
    try:
        dataset = build_dataset(
            rows, PipelineConfig(), str(tmp_path), stages=with_stage(lift_without_depth())
        )
        (summary,) = list(dataset.iter_rows())
    finally:
        ray.shutdown()
    assert_contract_failure(
        summary, rows[0]["clip_id"], "lift", "depth", "not in the stage's `reads`"
    )


def stereo_or_stuck(row: ClipRow, matcher) -> ClipRow:
    """The stereo stage, except for the first clip to reach it: that one hangs in a C call
    (libc `sleep`, which ignores Python's asynchronous exception). Each call leaves its clip,
    process and start time under `$S4D_TEST_STUCK_DIR/calls`."""
    folder = Path(os.environ[STUCK_DIR_ENV])
    started = time.time()
    call = {"clip_id": str(row["clip_id"]), "pid": os.getpid(), "start": started}
    (folder / "calls" / f"{row['clip_id']}-{time.monotonic_ns()}.json").write_text(json.dumps(call))
    try:
        fd = os.open(folder / "stuck", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return clip_stages.stereo_depth(row, matcher)
    os.write(fd, json.dumps(call).encode())
    os.close(fd)
    ctypes.CDLL(None).sleep(600)
    return row


@pytest.mark.slow
def test_a_call_stuck_in_c_code_fails_its_clip_and_its_worker_is_replaced(
    ray_head,  # noqa: F811
    synth_dir,
    tmp_path,
):
    """The stuck clip gets its StageTimeoutError failure row, the job finishes, the other
    clips are done, and none of them ran in the process of the stuck call (one stereo actor:
    it exited and Ray started another)."""
    import ray

    from s4d_ray.engine.pipeline import build_dataset

    (tmp_path / "calls").mkdir()
    rows, _ = input_rows(str(synth_dir / "npz"), str(synth_dir / "raw"), limit=3)
    config = config_from_dict({"stages": {"stereo": {"timeout_s": 3, "max_actors": 1}}})
    stages = with_stage(dataclasses.replace(STAGE["stereo"], process=stereo_or_stuck))
    (tmp_path / "tmp").mkdir()  # the workers' temp folder: where a stuck clip is counted
    init_ray(ray_head["address"], **{STUCK_DIR_ENV: str(tmp_path), "TMPDIR": str(tmp_path / "tmp")})
    start = time.monotonic()
    try:
        summaries = list(build_dataset(rows, config, str(tmp_path / "out"), stages).iter_rows())
    finally:
        ray.shutdown()
    assert time.monotonic() - start < 400
    stuck = json.loads((tmp_path / "stuck").read_text())
    by_clip = {s["clip_id"]: s for s in summaries}
    assert sorted(by_clip) == sorted(r["clip_id"] for r in rows)
    failure = by_clip.pop(stuck["clip_id"])
    assert (failure["error_stage"], failure["error_type"]) == ("stereo", "StageTimeoutError")
    assert stuck["clip_id"] in failure["error_message"]
    assert all(s["status"] == "done" for s in by_clip.values()), by_clip
    calls = [json.loads(p.read_text()) for p in (tmp_path / "calls").glob("*.json")]
    later = [c for c in calls if c["start"] > stuck["start"]]
    assert later and all(c["pid"] != stuck["pid"] for c in later), (stuck, calls)
    (counted,) = (tmp_path / "tmp" / "s4d-stuck").glob("*/*")  # one worker left stuck
    assert counted.name.startswith(f"{stuck['clip_id']}.{stuck['pid']}-")
