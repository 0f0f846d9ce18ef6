"""Hostile inputs to the commands (hardening issue): `s4d view`, `report`, `predict`,
`tracksto4d` / `eval-tracksto4d`, `rectify` and the typed flags of every command. Each case
was reproduced first; every bad input ends as one line `s4d <cmd>: error: ...` naming the file
(exit 2), an argparse usage error (exit 2), a note in the output, or a bounded-memory refusal;
never a traceback, a hang, a silent wrong value or an overwritten input. Hostile files are
generated in tmp_path."""

from __future__ import annotations

import io
import json
import os
import struct
import wave
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s4d_ray.argtypes import device_name
from s4d_ray.cli import main
from s4d_ray.errors import InputError, ResourceLimitError
from s4d_ray.io.clip_io import ClipRecord, write_clip
from s4d_ray.io.qa import clip_qa
from s4d_ray.io.writer import ClipFailure, write_failures
from s4d_ray.models.device import pick_device
from tests.test_clip_io import make_record
from tests.test_hardening import peak_rss_of

NAME = "abcDEF-_123_66957"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`s4d argv` in-process: (exit status, stdout, stderr); a usage error counts as exit 2."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str, command: str, *names: str) -> str:
    """The single error line of a failed command, checked to name each of `names`."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"s4d {command}: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def usage_error(err: str, flag: str) -> str:
    """The argparse usage error line for `flag`."""
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "error: argument" in line and flag in line, err
    return line


def clip_file(tmp_path, record: ClipRecord | None = None, name: str = NAME) -> str:
    path = tmp_path / f"{name}.npz"
    write_clip(record or make_record(num_tracks=40, num_frames=9), str(path))
    return str(path)


def leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


# --- A: s4d view ------------------------------------------------------------------------------


@pytest.fixture
def rerun():
    return pytest.importorskip("rerun")  # the `viz` extra


def test_view_timestamps_beyond_the_timeline_are_refused_before_writing(tmp_path, capsys, rerun):
    record = make_record(num_tracks=10, num_frames=4)
    record.timestamps = np.array([0, 1, 2, 1 << 62], np.int64)  # valid int64 µs, 146,000 years
    clip = clip_file(tmp_path, record)
    out = tmp_path / "view" / "clip.rrd"
    out.parent.mkdir()
    out.write_bytes(b"an older recording")
    code, _, err = run(["view", clip, "--out", str(out)], capsys)
    assert code == 2
    assert "timestamps span" in one_line_error(err, "view", clip)
    assert out.read_bytes() == b"an older recording"  # neither replaced nor left partial
    assert leftovers(out.parent) == []


def test_view_longest_timeline_is_exact(tmp_path, capsys, rerun):
    from s4d_ray.viz.rerun_view import MAX_TIMELINE_US

    record = make_record(num_tracks=10, num_frames=3)
    record.timestamps = np.array([5, 6, 5 + MAX_TIMELINE_US], np.int64)
    out = tmp_path / "clip.rrd"
    code, _, err = run(["view", clip_file(tmp_path, record), "--out", str(out)], capsys)
    assert code == 0, err
    from tests.test_viz import read_rrd

    times = []
    for chunk in read_rrd(out)["/world/camera"]:
        if not chunk.is_static:
            times += chunk.to_record_batch().column("time").cast(pa.int64()).to_pylist()
    assert sorted(times) == [0, 1000, MAX_TIMELINE_US * 1000]


def test_view_failure_mid_recording_leaves_no_partial_rrd(tmp_path, capsys, monkeypatch, rerun):
    import s4d_ray.viz.rerun_view as rerun_view

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("the disk went away")
        return original(*args, **kwargs)

    original = rerun_view.project_points
    monkeypatch.setattr(rerun_view, "project_points", broken)
    out = tmp_path / "clip.rrd"
    with pytest.raises(RuntimeError, match="disk went away"):
        main(["view", clip_file(tmp_path), "--out", str(out)])
    assert not out.exists() and leftovers(tmp_path) == []


def test_view_motion_extra_of_the_wrong_shape_is_noted(tmp_path, capsys, rerun):
    record = make_record(num_tracks=12, num_frames=5)
    for bad in (np.zeros((12, 6), np.float32), np.zeros(3, np.float32), np.full((12, 5), "x")):
        record.extras = {"motion": bad}
        clip = clip_file(tmp_path, record)
        out = tmp_path / "clip.rrd"
        code, stdout, err = run(["view", clip, "--out", str(out), "--colour", "motion"], capsys)
        assert code == 0, err
        assert "missing: motion: the `motion` extra is" in stdout
        assert "expected a number per track and frame [12, 5]; coloured by depth" in stdout
        assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "flag, value",
    [("--trail", "-4"), ("--frame-step", "0"), ("--max-tracks", "-1"), ("--port", "70000")],
)
def test_view_flags_are_ranged(tmp_path, capsys, flag, value):
    out = tmp_path / "clip.rrd"
    code, _, err = run(["view", "clip.npz", "--out", str(out), flag, value], capsys)
    assert code == 2
    assert f"got {value}" in usage_error(err, flag)
    assert not out.exists()


def test_view_out_a_folder_is_refused(tmp_path, capsys, rerun):
    folder = tmp_path / "recordings"
    folder.mkdir()
    code, _, err = run(["view", clip_file(tmp_path), "--out", str(folder)], capsys)
    assert code == 2
    assert "is a folder" in one_line_error(err, "view", str(folder))
    assert list(folder.iterdir()) == []


def test_view_densifies_only_the_tracks_shown(tmp_path):
    from s4d_ray.viz.rerun_view import dense_tracks_of, select_tracks

    rng = np.random.default_rng(3)
    mask = rng.random((57, 11)) > 0.4
    mask[[0, 20, 56]] = False  # empty tracks shift every later offset
    sparse = ClipRecord.sparse_from_dense(rng.normal(size=(57, 11, 3)), mask)
    record = ClipRecord(**{**make_record(num_frames=11).__dict__, **sparse})
    for shown in (0, 1, 7, 57):
        chosen = select_tracks(57, shown)
        np.testing.assert_array_equal(
            dense_tracks_of(record, chosen), record.dense_tracks()[chosen]
        )


def test_view_refuses_more_tracks_than_its_memory_cap(tmp_path, capsys, monkeypatch, rerun):
    clip = clip_file(tmp_path)  # 40 tracks x 9 frames: 8,640 bytes dense
    monkeypatch.setenv("S4D_MAX_VIEW_DENSE_BYTES", "5000")
    out = tmp_path / "clip.rrd"
    code, _, err = run(["view", clip, "--out", str(out), "--max-tracks", "0"], capsys)
    assert code == 2
    line = one_line_error(err, "view", clip, "--max-tracks")
    assert "40 tracks x 9 frames needs 8640 bytes" in line
    assert not out.exists()
    code, stdout, err = run(["view", clip, "--out", str(out), "--max-tracks", "20"], capsys)
    assert code == 0, err
    assert "20 of 40 tracks" in stdout


def many_tracks_clip(path, num_tracks: int, num_frames: int) -> None:
    """A clip of `num_tracks` one-point tracks over `num_frames` frames: a few MB of npz whose
    dense [N,T,3] float64 array is N·T·24 bytes."""
    rng = np.random.default_rng(0)
    c2w = np.tile(np.eye(3, 4, dtype=np.float32), (num_frames, 1, 1))
    coordinates = rng.normal(size=(num_tracks, 3)).astype(np.float32)
    coordinates[:, 2] = np.abs(coordinates[:, 2]) + 2
    record = ClipRecord(
        name=NAME,
        video_id="abcDEF-_123",
        timestamps=66957 + 33367 * np.arange(num_frames, dtype=np.int64),
        camera2world=c2w,
        rectified2rig=np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)),
        fov_bounds=np.array([-90, 90, -90, 90], np.float32),
        track_lengths=np.ones(num_tracks, np.int64),
        track_indices=rng.integers(0, num_frames, num_tracks),
        track_coordinates=coordinates,
    )
    write_clip(record, str(path))


@pytest.mark.slow
def test_view_of_a_million_tracks_stays_bounded(tmp_path, rerun):
    """10^6 tracks x 108 frames: 2.6 GB densified whole; only the 3,000 shown are."""
    big, small = tmp_path / "big" / f"{NAME}.npz", tmp_path / "small" / f"{NAME}.npz"
    many_tracks_clip(big, 1_000_000, 108)
    many_tracks_clip(small, 3_000, 108)
    code = (
        "from s4d_ray.viz.rerun_view import ViewOptions, write_recording\n"
        "r = write_recording({clip!r}, {out!r}, options=ViewOptions(frame_step=9))\n"
        "print('SHOWN', r.tracks_shown, r.tracks_total)"
    )
    rss, out = peak_rss_of(code.format(clip=str(big), out=str(tmp_path / "big.rrd")))
    base, base_out = peak_rss_of(code.format(clip=str(small), out=str(tmp_path / "small.rrd")))
    assert "SHOWN 3000 1000000" in out and "SHOWN 3000 3000" in base_out
    print(f"view 10^6 tracks: VmHWM {rss >> 20} MiB, baseline {base >> 20} MiB")
    assert rss - base <= 500 << 20, (rss, base)


# --- B: s4d report ----------------------------------------------------------------------------


def qa_row(clip: str = NAME, **overrides) -> dict:
    """A shard row as the engine writes it (QA columns of a real record), with overrides."""
    qa = clip_qa(make_record())
    row = {
        "name": clip,
        "stage_timings": json.dumps({"decode": 1.0, "stereo": 2.0}),
        "metadata": json.dumps({"tracks_tracked": 9, "tracks_kept": 5}),
        **{k: (list(map(int, v)) if k == "depth_histogram" else v) for k, v in qa.items()},
    }
    row.update(overrides)
    return row


def write_shard(output, rows: list[dict], name: str = "shard-a.parquet") -> str:
    (output / "parquet").mkdir(parents=True, exist_ok=True)
    path = output / "parquet" / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def report_data(output) -> dict:
    from s4d_ray.viz.report import read_report_data

    return read_report_data((output / "report.html").read_text())


def test_report_json_block_survives_script_and_comment_markup(tmp_path, capsys):
    message = "bad frame <!--<script>alert(1)</script> & more --> <b>"
    write_failures([ClipFailure(NAME, "decode", "VideoError", message)], str(tmp_path))
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    block = page[page.index("<script id='s4d-report-data'") :]
    block = block[block.index(">") + 1 : block.index("</script>")]
    assert not set("<>&") & set(block)
    assert page.count("<script") == 1 and page.count("</script>") == 1
    assert report_data(tmp_path)["failures"][0]["message"] == message


def test_report_dollar_signs_in_names_are_text_not_mathtext(tmp_path, capsys):
    timings = json.dumps({"decode": 1.0, "$\\undefinedmacro{$": 2.0})
    write_shard(tmp_path, [qa_row("clip$\\frac{$_1", stage_timings=timings)])
    failure = ClipFailure("other_1", "$x^$", "StageError", "costs $5 and $6")
    write_failures([failure], str(tmp_path))
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 0, err
    data = report_data(tmp_path)
    assert data["clips"][0]["name"] == "clip$\\frac{$_1"
    assert data["failures_by_stage"] == {"$x^$": 1}


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"stage_seconds_per_clip": {"decode": "slow"}}', "must map stages to seconds"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_report_malformed_summary_names_the_file(tmp_path, capsys, text, expected):
    (tmp_path / "summary.json").write_bytes(text)
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 2
    assert expected in one_line_error(err, "report", "summary.json")
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"num_tracks": "many"}, "column 'num_tracks': expected an integer"),
        ({"num_tracks": None}, "column 'num_tracks': expected an integer"),
        ({"valid_depth_fraction": "half"}, "column 'valid_depth_fraction': expected a number"),
        ({"depth_histogram": [1, 2]}, "column 'depth_histogram'"),
        ({"stage_timings": json.dumps({"decode": "x"})}, "seconds (a number) for stage 'decode'"),
        ({"metadata": json.dumps({"tracks_tracked": "lots"})}, "'tracks_tracked'"),
        ({"metadata": json.dumps({"tracks_tracked": 1e400})}, "'tracks_tracked'"),
        ({"name": None}, "column 'name': expected a string"),
    ],
)
def test_report_malformed_shard_values_name_file_clip_and_column(
    tmp_path, capsys, override, expected
):
    write_shard(tmp_path, [qa_row("good_1")], "shard-a.parquet")
    shard = write_shard(tmp_path, [qa_row("bad_2", **override)], "shard-b.parquet")
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 2
    line = one_line_error(err, "report", shard, expected)
    assert "good_1" not in line


def test_report_unreadable_tables_name_the_file(tmp_path, capsys):
    shard = write_shard(tmp_path, [qa_row()])
    with open(shard, "r+b") as f:  # a shard cut short by a full disk
        f.truncate(os.path.getsize(shard) // 2)
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 2
    assert "not a readable Parquet shard" in one_line_error(err, "report", shard)
    os.unlink(shard)
    failures = tmp_path / "failures"
    failures.mkdir()
    (failures / "failures-x.parquet").write_text("clip_id,stage\n")
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 2
    one_line_error(err, "report", "failures-x.parquet")
    pq.write_table(
        pa.table({"clip_id": ["a_1"], "stage": ["decode"]}), failures / "failures-x.parquet"
    )
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 2
    one_line_error(err, "report", "failures-x.parquet")
    table = pa.table({k: pa.array([None], pa.string()) for k in ("clip_id", "stage")})
    table = table.append_column("error_type", pa.array(["E"])).append_column(
        "message", pa.array(["m"])
    )
    pq.write_table(table, failures / "failures-x.parquet")
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 2
    assert "is not a string" in one_line_error(err, "report", "failures-x.parquet")


def test_report_refuses_an_output_folder_that_is_missing_or_a_file(tmp_path, capsys):
    missing = tmp_path / "typo"
    code, _, err = run(["report", str(missing)], capsys)
    assert code == 2
    assert "does not exist" in one_line_error(err, "report", str(missing))
    assert not missing.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    code, _, err = run(["report", str(a_file)], capsys)
    assert code == 2
    assert "is not a folder" in one_line_error(err, "report", str(a_file))
    assert a_file.read_text() == "keep me"
    output = tmp_path / "out"
    output.mkdir()
    code, _, err = run(["report", str(output), "--ground-truth", str(missing)], capsys)
    assert code == 2
    assert "has no gt/ folder" in one_line_error(err, "report", str(missing))
    assert not (output / "report.html").exists()


# --- C: s4d predict ---------------------------------------------------------------------------


def png_bytes(width: int, height: int) -> bytes:
    """A grayscale PNG of zeros declaring `width` x `height`, streamed through zlib: a
    16384² image is ~260 KB on disk and 268 MB of pixels (805 MB decoded as colour)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)
    rows_per_step = max(1, (8 << 20) // len(row))
    parts = []
    for start in range(0, height, rows_per_step):
        parts.append(compressor.compress(row * min(rows_per_step, height - start)))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def small_png(path, size: int = 48) -> str:
    import cv2

    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8)
    path.write_bytes(cv2.imencode(".png", image)[1].tobytes())
    return str(path)


def small_video(path, frames: int = 5, size: int = 64) -> str:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def predict_args(tmp_path, *source: str) -> list[str]:
    return ["predict", "--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "p"), *source]  # fmt: skip


def test_predict_images_that_are_not_images(tmp_path, capsys):
    good = small_png(tmp_path / "good.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(Path(good).read_bytes()[:200])
    for bad in (str(empty), str(text), str(truncated), "/dev/zero"):
        code, _, err = run(predict_args(tmp_path, "--images", good, bad), capsys)
        assert code == 2, err
        one_line_error(err, "predict", bad)


def test_predict_refuses_an_image_bomb_from_its_header(tmp_path, capsys):
    for width, height in ((16384, 16384), (8000, 6000)):
        bomb = tmp_path / f"bomb{width}.png"
        bomb.write_bytes(png_bytes(width, height))
        assert bomb.stat().st_size < 300_000
        code, _, err = run(predict_args(tmp_path, "--images", str(bomb), str(bomb)), capsys)
        assert code == 2
        line = one_line_error(err, "predict", str(bomb))
        assert str(width * height) in line


def test_image_pixel_limit_is_raisable(tmp_path):
    from s4d_ray.dynadust3r.inference import read_image

    image = small_png(tmp_path / "a.png", 48)
    with pytest.raises(
        ResourceLimitError, match=r"48x48 = 2304 pixels, more than the limit of 2000"
    ):
        read_image(image, max_pixels=2000)
    assert read_image(image, max_pixels=2304).shape == (48, 48, 3)


@pytest.mark.slow
def test_image_bomb_costs_no_memory(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(16384, 16384))
    small = small_png(tmp_path / "small.png")
    code = (
        "from s4d_ray.dynadust3r.inference import read_image\n"
        "from s4d_ray.errors import InputError\n"
        "try:\n    print('SHAPE', read_image({path!r}).shape)\n"
        "except InputError as error:\n    print('REFUSED', error)\n"
    )
    rss, out = peak_rss_of(code.format(path=str(bomb)))
    base, base_out = peak_rss_of(code.format(path=small))
    assert "REFUSED" in out and "SHAPE (48, 48, 3)" in base_out
    print(f"predict 16384² PNG: VmHWM {rss >> 20} MiB, baseline {base >> 20} MiB")
    assert rss - base <= 500 << 20, (rss, base)


def test_predict_videos_that_cannot_give_the_pair(tmp_path, capsys):
    video = small_video(tmp_path / "clip.mp4", frames=5)
    code, _, err = run(predict_args(tmp_path, "--video", video, "--pair", "0", "10"), capsys)
    assert code == 2
    assert "has 5 decodable frames: no frame [10]" in one_line_error(err, "predict", video)
    audio = tmp_path / "audio.mp4"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(bytes(16000))
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(Path(video).read_bytes()[: os.path.getsize(video) // 3])
    text = tmp_path / "text.mp4"
    text.write_text("hello\n" * 100)
    for bad in (str(audio), str(truncated), str(text), "/dev/zero"):
        code, _, err = run(predict_args(tmp_path, "--video", bad, "--pair", "0", "1"), capsys)
        assert code == 2, err
        one_line_error(err, "predict", bad)
    code, _, err = run(predict_args(tmp_path, "--video", video, "--max-pixels", "4000"), capsys)
    assert code == 2
    assert "64x64 = 4096 pixels" in one_line_error(err, "predict", video)
    code, _, err = run(predict_args(tmp_path, "--video", video, "--pair", "0", "-1"), capsys)
    assert code == 2 and "got -1" in usage_error(err, "--pair")


@pytest.mark.timeout(60)
def test_predict_video_fifo_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    code, _, err = run(predict_args(tmp_path, "--video", str(fifo)), capsys)
    assert code == 2
    assert "FIFO" in one_line_error(err, "predict", str(fifo))


def test_predict_out_a_file_and_missing_device(tmp_path, capsys):
    image = small_png(tmp_path / "a.png")
    a_file = tmp_path / "p"
    a_file.write_text("keep")
    code, _, err = run(predict_args(tmp_path, "--images", image, image), capsys)
    assert code == 2
    assert "not a folder" in one_line_error(err, "predict", str(a_file))
    assert a_file.read_text() == "keep"
    a_file.unlink()
    code, _, err = run(predict_args(tmp_path, "--images", image, image, "--device", "cuda:7"), capsys)  # fmt: skip
    assert code == 2
    assert "not available here" in one_line_error(err, "predict", "'cuda:7'", "cpu")
    code, _, err = run(predict_args(tmp_path, "--images", image, image, "--device", "bogus"), capsys)  # fmt: skip
    assert code == 2 and "bogus" in usage_error(err, "--device")


# --- D: s4d tracksto4d / eval-tracksto4d ------------------------------------------------------


def tracksto4d_args(tmp_path, command: str = "tracksto4d") -> list[str]:
    clip = clip_file(tmp_path)
    out = ["--output", str(tmp_path / "out")] if command == "tracksto4d" else []
    return [command, "--checkpoint", str(tmp_path / "none.pt"), "--npz", clip, *out]


@pytest.mark.parametrize("command", ["tracksto4d", "eval-tracksto4d"])
@pytest.mark.parametrize(
    "flag, value",
    [("--max-tracks", "-1"), ("--max-tracks", "0"), ("--window", "1"), ("--overlap", "0")],
)
def test_tracksto4d_flags_are_ranged(tmp_path, capsys, command, flag, value):
    code, _, err = run([*tracksto4d_args(tmp_path, command), flag, value], capsys)
    assert code == 2
    assert f"got {value}" in usage_error(err, flag)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["tracksto4d", "eval-tracksto4d"])
def test_tracksto4d_overlap_must_be_below_window(tmp_path, capsys, command):
    argv = [*tracksto4d_args(tmp_path, command), "--window", "8", "--overlap", "8"]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "overlap must be in [1, window - 1] = [1, 7]" in one_line_error(err, command)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["tracksto4d", "eval-tracksto4d"])
def test_tracksto4d_device_that_is_not_here(tmp_path, capsys, command):
    code, _, err = run([*tracksto4d_args(tmp_path, command), "--device", "cuda:7"], capsys)
    assert code == 2
    one_line_error(err, command, "'cuda:7'", "available")
    code, _, err = run([*tracksto4d_args(tmp_path, command), "--device", "bogus"], capsys)
    assert code == 2 and "expected one of auto, cpu" in usage_error(err, "--device")


def test_pick_device_checks_in_one_place():
    import torch

    assert pick_device("auto") in ("cpu", "cuda")
    assert pick_device("cpu") == "cpu"
    for name in ("bogus", "cuda:7", "cuda:-1", "mps:3", "cpu:1"):
        with pytest.raises(InputError, match=f"device '{name}' .*available"):
            pick_device(name)
    if torch.cuda.is_available():
        assert pick_device("cuda:0") == "cuda:0"
    else:
        with pytest.raises(InputError, match="not available here; available: auto, cpu$"):
            pick_device("cuda")


def test_device_argtype():
    import argparse

    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"):
        assert device_name(name) == name
    for name in ("bogus", "cuda:", "cuda:x", "cuda:0:1", "cpu:", "", "CUDA", "cuda:²"):
        with pytest.raises(argparse.ArgumentTypeError):
            device_name(name)


# --- E: s4d rectify ---------------------------------------------------------------------------


def test_rectify_output_folder_a_file_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    import s4d_ray.io.rectify as rectify

    a_file = tmp_path / "processed"
    a_file.write_text("keep")
    monkeypatch.setattr(rectify, "rectify_clip", lambda *a, **k: pytest.fail("did the work"))
    argv = ["rectify", "--vid", NAME, "--npz_folder", str(tmp_path), "--output_folder", str(a_file)]
    clip_file(tmp_path)
    code, _, err = run([*argv, "--raw_video_folder", str(tmp_path / "raw")], capsys)
    assert code == 2
    assert "not a folder" in one_line_error(err, "rectify", str(a_file))
    assert a_file.read_text() == "keep"


# --- F: every flag typed ----------------------------------------------------------------------


def test_every_numeric_flag_is_typed_and_ranged():
    """No `type=int`/`type=float` left bare, and no free-form device (introspected, so a new
    flag cannot slip through)."""
    from s4d_ray.cli import build_parser

    bare = []
    parser = build_parser()
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.type in (int, float) or (
                "--device" in action.option_strings and action.type is None
            ):
                bare.append(f"{command} {'/'.join(action.option_strings)}")
    assert bare == []


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["eval-dynadust3r", "--checkpoint", "c", "--npz", "n", "--seed", "-3"], "--seed"),
        (["eval-dynadust3r", "--checkpoint", "c", "--npz", "n", "--device", "gpu"], "--device"),
        (
            [
                "predict",
                "--checkpoint",
                "c",
                "--out",
                "o",
                "--images",
                "a",
                "b",
                "--max-pixels",
                "0",
            ],
            "--max-pixels",
        ),  # fmt: skip
    ],
)
def test_other_flags_are_ranged(capsys, argv, flag):
    code, _, err = run(argv, capsys)
    assert code == 2
    usage_error(err, flag)


def test_library_view_options_refuse_bad_values():
    from s4d_ray.viz.rerun_view import ViewOptions

    for bad in ({"trail": -4}, {"frame_step": 0}, {"jpeg_quality": 101}, {"max_tracks": 1.5}):
        with pytest.raises(InputError):
            ViewOptions(**bad)


def test_png_bytes_helper_makes_a_real_png():
    from PIL import Image

    with Image.open(io.BytesIO(png_bytes(33, 21))) as image:
        image.load()
        assert image.size == (33, 21) and not np.asarray(image).any()
