"""Driver start-up without a call per clip: completed clips from one dataset read of the
shards, rectified videos from one listing (figures in benchmarks/bench_startup)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from s4d_ray.engine.clip_stages import input_rows
from s4d_ray.engine.pipeline import plan_run
from s4d_ray.engine.resume import completed_clip_ids
from s4d_ray.io import fs, writer
from s4d_ray.io.rectify import RectifiedVideoIndex, find_rectified_videos
from s4d_ray.io.writer import build_clip_record, clip_ids_in_shards, write_records


def tiny_record(clip_id: str):
    """A valid release record with our extras: 2 tracks, 3 frames."""
    pose = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    return build_clip_record(
        name=clip_id,
        video_id=clip_id.rsplit("_", 1)[0],
        timestamps=np.arange(3) * 33_367,
        camera2world=np.stack([pose] * 3),
        rectified2rig=np.stack([np.eye(3)] * 2),
        fov_bounds=np.array([-90.0, 90.0, -90.0, 90.0]),
        tracks=np.ones((2, 3, 3)),
        track_mask=np.ones((2, 3), bool),
        visibility=np.ones((2, 3), bool),
        colours=np.zeros((2, 3), np.uint8),
        motion=np.zeros((2, 3)),
        stage_timings={"decode": 0.1},
        metadata={"backend": "cpu"},
    )


def touch(filesystem, path: str) -> None:
    """An empty file at `path`, parents created (listings only need names)."""
    filesystem.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    filesystem.pipe_file(path, b"")


@pytest.fixture(params=["local", "memory", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path)
    elif request.param == "gcs":  # gcsfs on the emulator, wrapped for pyarrow
        yield request.getfixturevalue("gcs_bucket")
    else:
        uri = f"memory://s4d-startup-{uuid.uuid4().hex}"
        yield uri
        filesystem, path = fs.filesystem(uri)
        if filesystem.exists(path):
            filesystem.rm(path, recursive=True)


def test_completed_clips_are_npz_and_shard_rows(root, monkeypatch):
    """Complete = npz written AND row in some shard; several shards of several clips each,
    read two shards per dataset (the chunking of large outputs)."""
    monkeypatch.setattr(writer, "SHARDS_PER_READ", 2)
    output = fs.join(root, "out")
    ids = [f"vid{i // 3}_{1000 * i}" for i in range(7)]
    write_records([tiny_record(c) for c in ids[:3]], output)
    write_records([tiny_record(c) for c in ids[3:5]], output)
    write_records([tiny_record(ids[5])], output)
    # a clip whose shard never got written (killed between npz and shard): not complete
    filesystem, npz_folder = fs.filesystem(fs.join(output, "npz"))
    touch(filesystem, f"{npz_folder}/{ids[6]}.npz")
    # a clip in a shard whose npz is gone: not complete
    filesystem.rm(f"{npz_folder}/{ids[0]}.npz")
    assert clip_ids_in_shards(fs.join(output, "parquet")) == set(ids[:6])
    assert completed_clip_ids(output) == set(ids[1:6])
    assert completed_clip_ids(fs.join(root, "empty")) == set()


def test_rectified_index_matches_find_for_both_layouts(root, monkeypatch):
    """Nested `<id>/<id>-…` and flat `<id>-…` layouts in one folder; a clip with neither gets
    the flat names (it fails at decode naming them), as `find_rectified_videos` does."""
    folder = fs.join(root, "processed")
    filesystem, path = fs.filesystem(folder)
    nested, flat, missing = "vidA_100", "vidB_200", "vidC_300"
    for eye in ("left", "right"):
        touch(filesystem, f"{path}/{nested}/{nested}-{eye}_rectified.mp4")
        touch(filesystem, f"{path}/{flat}-{eye}_rectified.mp4")
    # deeper or mismatched nesting is not the reference layout
    touch(filesystem, f"{path}/x/{missing}/{missing}-left_rectified.mp4")
    touch(filesystem, f"{path}/{missing}/other-left_rectified.mp4")
    expected = {c: find_rectified_videos(folder, c) for c in (nested, flat, missing)}
    assert expected[nested][0].endswith(f"{nested}/{nested}-left_rectified.mp4")
    assert expected[flat][1].endswith(f"processed/{flat}-right_rectified.mp4")

    def no_exists(uri):
        raise AssertionError(f"exists({uri!r}) called per clip")

    monkeypatch.setattr(fs, "exists", no_exists)
    index = RectifiedVideoIndex(folder)
    assert {c: index(c) for c in expected} == expected
    absent = fs.join(root, "absent")
    assert RectifiedVideoIndex(absent)(nested) == (
        fs.join(absent, f"{nested}-left_rectified.mp4"),
        fs.join(absent, f"{nested}-right_rectified.mp4"),
    )


def test_plan_run_skips_completed_and_lists_rectified_once(root, monkeypatch):
    """The driver's whole start-up: rows for new clips only, rectified URIs from the index."""
    npz_folder = fs.join(root, "npz")
    filesystem, npz_path = fs.filesystem(npz_folder)
    ids = ["vidA_100", "vidB_200", "vidC_300"]
    for c in ids:
        touch(filesystem, f"{npz_path}/{c}.npz")
    touch(filesystem, f"{npz_path}/bad name.npz")
    _, rect_path = fs.filesystem(fs.join(root, "processed"))
    touch(filesystem, f"{rect_path}/vidB_200/vidB_200-left_rectified.mp4")
    output = fs.join(root, "out")
    write_records([tiny_record(ids[0])], output)
    monkeypatch.setattr(fs, "exists", lambda uri: pytest.fail(f"exists({uri!r}) per clip"))
    plan = plan_run(npz_folder, output, rectified=fs.join(root, "processed"))
    assert plan.completed == {ids[0]}
    assert [r["clip_id"] for r in plan.rows] == ids[1:]
    assert plan.rows[0]["left_uri"].endswith("vidB_200/vidB_200-left_rectified.mp4")
    assert plan.rows[1]["left_uri"].endswith("processed/vidC_300-left_rectified.mp4")
    assert [r["error_stage"] for r in plan.rejected] == ["input"]
    rows, _ = input_rows(npz_folder, videos="raw", limit=1)
    assert [r["clip_id"] for r in rows] == ids[:1]
