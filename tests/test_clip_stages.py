"""Per-clip stage transforms without Ray: failure capture, placeholders, inputs, in-process run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from s4d_ray.engine.clip_stages import TooFewTracksError, input_rows, lift_and_filter
from s4d_ray.engine.config import PipelineConfig
from s4d_ray.engine.rows import clip_spec, run_stage
from s4d_ray.engine.runner import run_in_process
from s4d_ray.engine.stage_list import STAGE, STAGES
from s4d_ray.geometry.camera import RectifiedCamera
from s4d_ray.io.clip_io import read_clip

DECODE, STEREO, LIFT = STAGE["decode"], STAGE["stereo"], STAGE["lift"]


def test_a_failing_stage_becomes_a_failure_record_with_a_stable_schema():
    row = clip_spec("abc_1", "/nowhere/abc_1.npz", videos_root="/nowhere")
    row = run_stage(row, DECODE, lambda r: (_ for _ in ()).throw(OSError("disk on fire")))
    assert (row["error_stage"], row["error_type"], row["error_message"]) == (
        "decode",
        "OSError",
        "disk on fire",
    )
    assert row["left"].shape == (0, 0, 0, 0) and row["left"].dtype == np.uint8
    assert row["timestamps"].dtype == np.int64 and row["video_id"] == ""

    called = []
    row = run_stage(row, STEREO, lambda r: called.append(1) or r)
    assert not called, "a failed clip must not run later stages"
    assert "right" not in row and row["depth"].shape == (0, 0, 0)
    assert row["error_stage"] == "decode"


def add_depth(row):
    row["depth"] = np.zeros((1, 2, 2), np.float32)
    return row


def test_stage_timings_are_recorded():
    row = clip_spec("abc_1", "x.npz", videos_root="v")
    row = run_stage(row, STEREO, add_depth)
    assert "stereo" in json.loads(row["timings"]) and row["error_stage"] == ""


def test_too_few_tracks_is_an_error():
    num_tracks, num_frames = 3, 4
    c2w = np.tile(np.eye(3, 4, dtype=np.float32), (num_frames, 1, 1))
    row = {
        **clip_spec("abc_1", "x.npz", videos_root="v"),
        "camera2world": c2w,
        "left": np.zeros((num_frames, 8, 8, 3), np.uint8),
        "depth": np.zeros((num_frames, 8, 8), np.float32),  # no valid depth anywhere
        "tracks_2d": np.full((num_tracks, num_frames, 2), 4.0, np.float32),
        "visible": np.ones((num_tracks, num_frames), bool),
        "query_frame": np.zeros(num_tracks, np.int64),
        "point_classes": np.zeros((num_tracks, 0), np.uint8),
        "camera": RectifiedCamera(8, 60.0, 0.063).to_json(),
    }
    row = run_stage(row, LIFT, lambda r: lift_and_filter(r, min_tracks=1))
    assert row["error_stage"] == "lift" and row["error_type"] == TooFewTracksError.__name__
    assert "0 valid tracks" in row["error_message"]


def test_input_rows_reject_unsafe_names_and_skip_completed(synth_dir, tmp_path):
    npz = tmp_path / "npz"
    shutil.copytree(synth_dir / "npz", npz)
    (npz / "..evil.npz").write_bytes(b"x")
    clip_ids = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))
    rows, rejected = input_rows(str(npz), str(synth_dir / "raw"), skip=frozenset(clip_ids[:1]))
    assert [r["clip_id"] for r in rows] == clip_ids[1:]
    assert [(r["clip_id"], r["error_stage"]) for r in rejected] == [("..evil", "input")]
    rows, _ = input_rows(str(npz), str(synth_dir / "raw"), limit=2)
    assert len(rows) == 2


def test_whole_pipeline_in_process(synth_dir, tmp_path):
    """All stages on one synthetic clip without Ray (the engine's logic, minus the wiring)."""
    rows, _ = input_rows(str(synth_dir / "npz"), str(synth_dir / "raw"), limit=1)
    (summary,) = run_in_process(rows, PipelineConfig(), str(tmp_path))
    assert summary["status"] == "done", summary
    assert summary["num_tracks"] >= 16 and summary["num_frames"] == 12
    assert set(json.loads(summary["timings"])) == {spec.name for spec in STAGES}
    record = read_clip(str(tmp_path / "npz" / f"{rows[0]['clip_id']}.npz"))
    assert record.num_tracks == summary["num_tracks"]
    assert (record.track_lengths > 0).all()  # tracks the optimiser's mask empties are not written
    assert json.loads(str(record.extras["metadata"]))["tracks_dropped_empty_after_mask"] >= 0
    assert len(list((tmp_path / "parquet").glob("*.parquet"))) == 1


def test_already_rectified_inputs(synth_dir, tmp_path):
    """`--rectified`: the reference's `<id>/<id>-{left,right}_rectified.mp4` instead of raw video."""
    from s4d_ray.io.rectify import rectify_to_files

    clip_id = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))[0]
    npz = tmp_path / "npz"
    npz.mkdir()
    shutil.copy(synth_dir / "npz" / f"{clip_id}.npz", npz)
    rectify_to_files(clip_id, str(npz), str(synth_dir / "raw"), str(tmp_path / "processed"))
    rows, _ = input_rows(str(npz), rectified=str(tmp_path / "processed"))
    assert rows[0]["left_uri"].endswith(f"{clip_id}/{clip_id}-left_rectified.mp4")
    (summary,) = run_in_process(rows, PipelineConfig(), str(tmp_path / "out"))
    assert summary["status"] == "done", summary


def test_rectified_inputs_of_another_size_fail_naming_clip_and_stage(synth_dir, tmp_path):
    """`--rectified` videos must be the 512x512, 60° crops: a 96x64 pair is a clear failure."""
    from s4d_ray.engine.clip_stages import decode_and_rectify
    from s4d_ray.errors import StageError
    from s4d_ray.io.video import write_video

    clip_id = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))[0]
    npz = tmp_path / "npz"
    npz.mkdir()
    shutil.copy(synth_dir / "npz" / f"{clip_id}.npz", npz)
    frames = [np.full((64, 96, 3), 100, np.uint8)] * 12
    for eye in ("left", "right"):
        write_video(str(tmp_path / "rect" / f"{clip_id}-{eye}_rectified.mp4"), frames)
    rows, _ = input_rows(str(npz), rectified=str(tmp_path / "rect"))
    with pytest.raises(StageError, match="96x64, expected 512x512") as raised:
        decode_and_rectify(rows[0])
    assert raised.value.clip_id == clip_id and raised.value.stage == "decode"


def test_no_npz_is_an_error_not_an_empty_job(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .npz files under"):
        input_rows(str(tmp_path / "missing"), str(tmp_path))
