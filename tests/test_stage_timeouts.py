"""Per-clip stage timeouts: a clip that hangs a stage becomes a failure row; the job goes on."""

from __future__ import annotations

import threading
import time

import pytest

from s4d_ray.engine.clip_stages import input_rows
from s4d_ray.engine.config import config_from_dict
from s4d_ray.engine.pipeline import run_in_process
from s4d_ray.engine.runner import StageTimeoutError, call_with_timeout


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
