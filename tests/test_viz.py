"""Seeing the data: the Rerun recording of a clip, the run report, QA columns, accuracy by band."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from s4d_ray.cli import main as s4d_main
from s4d_ray.engine.pipeline import RunSummary
from s4d_ray.geometry.camera import RELEASE_CAMERA
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, read_clip, write_clip
from s4d_ray.io.dense import camera_json, encode_depth, encode_frames, write_dense
from s4d_ray.io.qa import QA_COLUMNS, clip_qa, point_depths
from s4d_ray.io.writer import (
    ClipFailure,
    build_clip_record,
    read_parquet_clips,
    write_failures,
    write_records,
)
from s4d_ray.synthetic.evaluate import (
    DEPTH_BANDS_M,
    banded_errors,
    format_band_table,
    point_errors,
    stereo_depth_error,
)
from s4d_ray.synthetic.synth import load_ground_truth
from s4d_ray.track.lift import motion_displacement
from s4d_ray.viz.colours import depth_colours
from s4d_ray.viz.report import read_report_data, write_report
from s4d_ray.viz.rerun_view import ViewOptions, select_tracks, write_recording

rerun = pytest.importorskip("rerun")  # the `viz` extra (installed by `make`)


def first_clip(synth_dir) -> tuple[str, ClipRecord]:
    clip_id = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))[0]
    return clip_id, read_clip(str(synth_dir / "npz" / f"{clip_id}.npz"))


def engine_like_record(record: ClipRecord, seconds: dict, metadata: dict) -> ClipRecord:
    """The release record of a synth clip with the engine's extras (camera-free motion from
    the real lift function, visibility = stored)."""
    dense = record.dense_tracks()
    stored = np.isfinite(dense[..., 0])
    motion = motion_displacement(
        np.nan_to_num(dense), stored, record.world2camera(), RELEASE_CAMERA
    )
    return build_clip_record(
        name=record.name,
        video_id=record.video_id,
        timestamps=record.timestamps,
        camera2world=record.camera2world,
        rectified2rig=record.rectified2rig,
        fov_bounds=record.fov_bounds,
        tracks=np.nan_to_num(dense),
        track_mask=stored,
        visibility=stored,
        colours=np.full((record.num_tracks, 3), 200, np.uint8),
        motion=motion,
        stage_timings=seconds,
        metadata=metadata,
    )


def read_rrd(path) -> dict[str, list]:
    """Entity path -> the Rerun chunks logged to it (read with Rerun's own RrdReader)."""
    from rerun.chunk import RrdReader

    entities: dict[str, list] = {}
    for chunk in RrdReader(str(path)).stream().collect().stream():
        entities.setdefault(chunk.entity_path, []).append(chunk)
    return entities


def frames_of(chunks: list) -> list[int]:
    frames: list[int] = []
    for chunk in chunks:
        if not chunk.is_static:
            frames += chunk.to_record_batch().column("frame").to_pylist()
    return sorted(frames)


def column(chunks: list, suffix: str) -> list:
    """Rows of the component column ending with `suffix`, in frame order."""
    rows = []
    for chunk in chunks:
        batch = chunk.to_record_batch()
        name = next(n for n in batch.schema.names if n.endswith(suffix))
        frames = batch.column("frame").to_pylist()
        rows += list(zip(frames, batch.column(name).to_pylist(), strict=True))
    return [value for _, value in sorted(rows, key=lambda r: r[0])]


def test_recording_of_a_synth_clip_opens_with_rerun(synth_dir, tmp_path):
    clip_id, release = first_clip(synth_dir)
    # an engine output root with the clip's npz (extras) and its dense outputs (frames, depth)
    root = tmp_path / "out"
    record = engine_like_record(release, {"lift": 1.0}, {"tracks_tracked": release.num_tracks})
    write_clip(record, str(root / "npz" / f"{clip_id}.npz"))
    truth = load_ground_truth(str(synth_dir), clip_id)
    write_dense(
        str(root),
        clip_id,
        encode_frames(truth["rgb"]),
        encode_frames(truth["rgb"]),
        encode_depth(truth["depth"]),
        camera_json(release.num_frames, truth["rgb"].shape[1]),
    )
    out = tmp_path / "clip.rrd"
    result = write_recording(
        str(root / "npz" / f"{clip_id}.npz"),
        str(out),
        options=ViewOptions(max_tracks=200, colour="motion"),
    )
    frames = release.num_frames
    assert (result.frames_logged, result.images_logged, result.depth_logged) == (frames,) * 3
    assert result.tracks_shown == 200 and result.missing == []

    entities = read_rrd(out)
    expected = {
        "/world",
        "/world/trajectory",
        "/world/camera",
        "/world/camera/image",
        "/world/camera/image/tracks",
        "/world/camera/image/tracks/trails",
        "/world/camera/depth",
        "/world/tracks",
        "/world/tracks/trails",
        "/notes",
    }
    assert expected <= set(entities)
    for entity in ("/world/camera", "/world/camera/depth", "/world/tracks"):
        assert frames_of(entities[entity]) == list(range(frames)), entity

    # the logged 3D points are the clip's (subsampled) tracks at each frame
    dense = release.dense_tracks()[select_tracks(release.num_tracks, 200)]
    positions = column(entities["/world/tracks"], "Points3D:positions")
    for t in (0, frames - 1):
        want = dense[np.isfinite(dense[:, t, 0]), t]
        np.testing.assert_allclose(np.asarray(positions[t]), want, atol=1e-5)
    # the dense depth cloud: the true depth back-projected, on the tracks' colour scale
    cloud = np.asarray(column(entities["/world/camera/depth"], "Points3D:positions")[0])
    cloud_colours = column(entities["/world/camera/depth"], "Points3D:colors")[0]
    step = ViewOptions().depth_downsample
    true_depth = truth["depth"][0][::step, ::step]
    np.testing.assert_allclose(cloud[:, 2], true_depth[true_depth > 0], rtol=1e-5)
    far, near = np.argmax(cloud[:, 2]), np.argmin(cloud[:, 2])
    want = depth_colours(cloud[[far, near], 2])
    got = np.array(
        [
            [c >> 24 & 255, c >> 16 & 255, c >> 8 & 255]
            for c in (cloud_colours[far], cloud_colours[near])
        ]
    )
    np.testing.assert_array_equal(got, want)
    assert want[0, 2] > want[0, 0] and want[1, 0] > want[1, 2]  # far blue, near red
    # camera poses are the npz's camera2world
    translations = column(entities["/world/camera"], "Transform3D:translation")
    np.testing.assert_allclose(
        np.asarray(translations).reshape(frames, 3), release.camera2world[:, :, 3], atol=1e-5
    )


def test_view_bad_inputs_show_what_exists_and_say_what_is_missing(synth_dir, tmp_path, capsys):
    clip_id, release = first_clip(synth_dir)
    empty = ClipRecord(
        **{
            **release.__dict__,
            **ClipRecord.sparse_from_dense(
                np.zeros((0, release.num_frames, 3)), np.zeros((0, release.num_frames), bool)
            ),
        }
    )
    npz = tmp_path / f"{clip_id}.npz"
    write_clip(empty, str(npz))
    out = tmp_path / "empty.rrd"
    code = s4d_main(["view", str(npz), "--out", str(out), "--videos", str(tmp_path / "nothing")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "zero tracks" in printed and "no raw video" in printed and "no `motion`" not in printed
    assert "extras: none" in printed  # a release npz: no visibility, colours, motion
    entities = read_rrd(out)
    assert frames_of(entities["/world/camera"]) == list(range(release.num_frames))
    assert "/world/tracks" not in entities and "/world/camera/image" in entities  # the pinhole
    text = str(entities["/notes"][0].to_record_batch().to_pylist())
    assert "zero tracks" in text and "no raw video" in text

    # the release npz with frames from the raw video, coloured by motion without the extra
    out2 = tmp_path / "release.rrd"
    result = write_recording(
        str(synth_dir / "npz" / f"{clip_id}.npz"),
        str(out2),
        videos=str(synth_dir / "raw"),
        options=ViewOptions(max_tracks=50, frame_step=2, colour="motion"),
    )
    assert result.images_logged == result.frames_logged == (release.num_frames + 1) // 2
    assert any("no `motion` extra" in m for m in result.missing)
    assert frames_of(read_rrd(out2)["/world/camera/image"])[:2] == [0, 2]


def make_run_output(synth_dir, root: str) -> tuple[list[ClipRecord], list[ClipFailure], dict]:
    """An engine output as a run with failures leaves it: npz + shard rows for two clips,
    failures of two more (decode, stereo), and the run's summary.json."""
    ids = sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))[:2]
    records = []
    for i, clip_id in enumerate(ids):
        release = read_clip(str(synth_dir / "npz" / f"{clip_id}.npz"))
        metadata = {
            "tracks_tracked": release.num_tracks + 100 * (i + 1),
            "tracks_dropped_no_depth": 60 * (i + 1),
            "tracks_dropped_sky": 30,
            "tracks_dropped_boundary": 7,
            "tracks_dropped_drift": 3 * i,
            "tracks_kept": release.num_tracks,
            "valid_depth_fraction": 0.5 + 0.25 * i,
        }
        seconds = {"decode": 0.5 + i, "stereo": 2.0, "tracking": 3.0 + i, "lift": 0.7}
        records.append(engine_like_record(release, seconds, metadata))
    failures = [
        ClipFailure("badvideo000_0", "decode", "VideoError", "corrupt video"),
        ClipFailure("badstereo00_0", "stereo", "ValueError", "no valid depth"),
    ]
    write_records(records, root)
    write_failures(failures, root)
    summary = RunSummary(
        clips_done=2,
        clips_failed=2,
        failures_by_stage=dict(Counter(f.stage for f in failures)),
        stage_seconds_per_clip={
            s: float(np.mean([json.loads(str(r.extras["stage_timings"]))[s] for r in records]))
            for s in ("decode", "stereo", "tracking", "lift")
        },
        wall_seconds=12.5,
        clips_per_hour=576.0,
        backend="cpu",
    )
    fs.write_bytes(fs.join(root, "summary.json"), json.dumps(summary.__dict__).encode())
    return records, failures, summary.__dict__


def test_run_report_figures_match_the_run(synth_dir, tmp_path):
    root = str(tmp_path / "out")
    records, failures, summary = make_run_output(synth_dir, root)
    uri = write_report(root)
    assert uri == fs.join(root, "report.html")
    page = fs.read_bytes(uri).decode()
    # self-contained: every image inline, nothing fetched
    assert page.count("src='data:image/png;base64,") >= 6
    assert "http://" not in page and "https://" not in page and "<link" not in page

    data = read_report_data(page)
    assert data["summary"] == {k: v for k, v in summary.items() if k != "config"}
    assert data["clips_done_total"] == summary["clips_done"]
    assert data["clips_failed_total"] == summary["clips_failed"]
    assert data["failures_by_stage"] == summary["failures_by_stage"]
    by_name = {r["name"]: r for r in data["clips"]}
    for record in records:
        row = by_name[record.name]
        meta = json.loads(str(record.extras["metadata"]))
        assert row["num_tracks"] == record.num_tracks
        assert row["valid_depth_fraction"] == meta["valid_depth_fraction"]
        assert row["stage_timings"] == json.loads(str(record.extras["stage_timings"]))
    means = {
        s: np.mean([r["stage_timings"][s] for r in data["clips"]])
        for s in summary["stage_seconds_per_clip"]
    }
    assert means == pytest.approx(summary["stage_seconds_per_clip"])
    tracked = sum(json.loads(str(r.extras["metadata"]))["tracks_tracked"] for r in records)
    assert data["filters"]["tracks_tracked"] == tracked
    assert data["filters"]["dropped"]["no_depth"] == 60 + 120
    assert data["filters"]["dropped_fraction"]["sky"] == pytest.approx(60 / tracked)
    points = sum(int(r.track_lengths.sum()) for r in records)
    assert sum(data["depth_histogram"]) == points

    # `s4d report` rebuilds it, with accuracy from the synthetic ground truth
    (tmp_path / "out" / "report.html").unlink()
    assert s4d_main(["report", root, "--ground-truth", str(synth_dir)]) == 0
    data = read_report_data((tmp_path / "out" / "report.html").read_text())
    bands = data["accuracy"]["bands"]
    assert sum(b["points"] for b in bands) == points  # exact tracks: every point in a band
    assert all(b["median_error_cm"] < 0.01 for b in bands if b["points"])


def test_parquet_rows_carry_qa_figures(synth_dir, tmp_path):
    root = str(tmp_path / "out")
    records, _, _ = make_run_output(synth_dir, root)
    shard = fs.list_files(fs.join(root, "parquet"), ".parquet")[0]
    frame = pd.read_parquet(shard)
    assert set(QA_COLUMNS) <= set(frame.columns)
    for record in records:
        row = frame[frame["name"] == record.name].iloc[0]
        qa = clip_qa(record)
        assert row["valid_depth_fraction"] == qa["valid_depth_fraction"]
        assert row["tracks_kept_fraction"] == pytest.approx(
            record.num_tracks / json.loads(str(record.extras["metadata"]))["tracks_tracked"]
        )
        depth = point_depths(record)
        assert row["median_depth_m"] == pytest.approx(np.median(depth))
        assert int(np.sum(row["depth_histogram"])) == depth.size
    assert [r.name for r in read_parquet_clips(shard)] == [r.name for r in records]


def test_accuracy_by_depth_band_beside_the_stereo_limit(synth_dir):
    # δz = z²·δd/(f·b): f = 512/(2·tan 30°) = 443.4 px, b = 0.063 m
    assert stereo_depth_error(10.0, 0.25) == pytest.approx(100 * 0.25 / (443.405 * 0.063), rel=1e-4)
    clip_id, record = first_clip(synth_dir)
    truth = load_ground_truth(str(synth_dir), clip_id)
    centres = record.camera2world[:, :, 3]
    dense = record.dense_tracks()
    pushed = centres[None] + 1.05 * (dense - centres[None])  # 5 % deeper along each ray
    sparse = ClipRecord.sparse_from_dense(pushed, np.isfinite(dense[..., 0]))
    errors = point_errors(ClipRecord(**{**record.__dict__, **sparse}), truth)
    bands = banded_errors(errors)
    assert [(b["lo_m"], b["hi_m"]) for b in bands] == list(DEPTH_BANDS_M)
    assert sum(b["points"] for b in bands) == int((errors["depth_m"] < 20).sum())
    for band in bands:
        if band["points"]:
            assert band["median_relative_depth_error"] == pytest.approx(0.05, abs=0.002)
            assert band["lo_m"] <= band["median_depth_m"] < band["hi_m"]
            z = band["median_depth_m"]
            assert band["stereo_relative_0.25"] == pytest.approx(z * 0.25 / 27.934, rel=1e-3)
    table = format_band_table(bands)
    assert "2-5 m" in table and "stereo@0.45px" in table
