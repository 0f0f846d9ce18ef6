"""Per-clip stage timeouts: a clip that hangs a stage becomes a failure row; the job goes on."""

from __future__ import annotations

import threading
import time

import pytest

from s4d_ray.engine.clip_stages import input_rows
from s4d_ray.engine.config import config_from_dict
from s4d_ray.engine.runner import StageTimeoutError, call_with_timeout, run_in_process


def test_an_overrunning_call_is_stopped_and_named():
    def hang(row):
        while True:
            time.sleep(0.01)

    start = time.perf_counter()
    with pytest.raises(StageTimeoutError, match=r"clip 'v_1': stage 'decode' took longer than"):
        call_with_timeout(hang, {"clip_id": "v_1"}, 0.2, "decode")
    assert time.perf_counter() - start < 3
    assert not [t for t in threading.enumerate() if t.name == "s4d-decode"]  # the thread stopped


def test_calls_within_the_limit_return_and_raise_as_usual():
    assert call_with_timeout(lambda row: {**row, "x": 1}, {"clip_id": "v_1"}, 5, "lift")["x"] == 1
    with pytest.raises(KeyError):
        call_with_timeout(lambda row: row["missing"], {"clip_id": "v_1"}, 5, "lift")
    assert call_with_timeout(lambda row: row, {"clip_id": "v_1"}, 0, "lift") == {"clip_id": "v_1"}


def test_a_clip_that_overruns_tracking_becomes_a_failure_row(synth_dir, tmp_path):
    """The real stages: Lucas-Kanade cannot track a clip in 50 ms."""
    rows, _ = input_rows(str(synth_dir / "npz"), str(synth_dir / "raw"), limit=1)
    config = config_from_dict({"stages": {"tracking": {"timeout_s": 0.05}}})
    (failed,) = run_in_process(rows, config, str(tmp_path))
    assert failed["status"] == "failed"
    assert (failed["error_stage"], failed["error_type"]) == ("tracking", "StageTimeoutError")
    assert rows[0]["clip_id"] in failed["error_message"]
    assert not list(tmp_path.glob("npz/*.npz"))


def test_a_call_stuck_in_c_code_is_recorded_and_the_process_goes_on(monkeypatch):
    """libc `sleep` ignores the asynchronous exception: the call times out, stays stuck and
    is recorded (a Ray worker exits on it); this process, like the in-process runner, goes on."""
    import ctypes

    from s4d_ray.engine import runner

    monkeypatch.setattr(runner, "STOP_GRACE_S", 0.2)
    monkeypatch.setattr(runner, "_stuck_calls", [])

    def stuck(row):
        ctypes.CDLL(None).sleep(2)
        return row

    with pytest.raises(StageTimeoutError, match="clip 'v_1': stage 'stereo' took longer"):
        call_with_timeout(stuck, {"clip_id": "v_1"}, 0.2, "stereo")
    assert runner.worker_stuck()


def test_a_clip_that_left_workers_stuck_is_not_run_again(monkeypatch, tmp_path):
    """Should a stuck clip's own call be retried by Ray, it is failed without running once it
    has left `STUCK_LIMIT` workers stuck (counted per run on the node)."""
    import tempfile

    from s4d_ray.engine import runner
    from s4d_ray.engine.rows import clip_spec
    from s4d_ray.engine.stage_list import TASK, Job, StageSpec

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(runner, "_stuck_calls", [])
    ran = []

    def process(row, job):
        ran.append(row["clip_id"])
        return row

    spec = StageSpec("lift", kind=TASK, process=process)
    job = Job(config_from_dict({}), str(tmp_path), run_id="run1")
    for _ in range(runner.STUCK_LIMIT):
        assert not runner.serve(spec, job, clip_spec("v_1", "x.npz"), job, {})["error_type"]
        runner.record_stuck(job.run_id, "v_1")
    refused = runner.serve(spec, job, clip_spec("v_1", "x.npz"), job, {})
    assert (refused["error_stage"], refused["error_type"]) == ("lift", "StageTimeoutError")
    assert f"left {runner.STUCK_LIMIT} workers stuck" in refused["error_message"]
    assert ran == ["v_1"] * runner.STUCK_LIMIT
    assert runner.stuck_count("other_run", "v_1") == 0
