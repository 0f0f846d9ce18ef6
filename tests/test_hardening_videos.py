"""Hostile own-video inputs and commands that write beside their inputs, each reproduced first:
an output over an input, odd video files (a 16-digit start time, duplicate frame times, a
display rotation, a size change mid-stream, a raw stream, tiny and huge frames), symlink
loops in listings, video names in any case and form."""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from s4d_ray.cli import main
from s4d_ray.errors import VideoError
from s4d_ray.io import fs
from s4d_ray.io.video_lookup import (
    DuplicateVideoError,
    find_video,
    list_videos,
    video_id_of_name,
)
from s4d_ray.ownvideo.clips import ClipConfig, iter_video_frames
from s4d_ray.ownvideo.prepare import OwnVideoConfig, prepare_video
from tests.ownvideo_inputs import make_odd_videos
from tests.test_hardening import peak_rss_of


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory) -> dict[str, str]:
    return make_odd_videos(tmp_path_factory.mktemp("odd"))


# --- 1: no command writes over or inside its inputs -------------------------------------------


def test_tracksto4d_output_over_its_input_is_refused_and_the_input_kept(
    synth_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "OUT"
    shutil.copytree(synth_dir / "npz", out / "npz")
    before = {p.name: p.read_bytes() for p in (out / "npz").iterdir()}
    (tmp_path / "model.pt").write_bytes(b"not read: refused before")
    argv = ["tracksto4d", "--checkpoint", str(tmp_path / "model.pt"), "--npz", str(out / "npz")]
    assert main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "overlaps --npz" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in (out / "npz").iterdir()} == before


@pytest.mark.parametrize(
    "argv",
    [
        ["export-pointmaps", "--input", "{d}/run", "--output", "{d}/run/pointmaps"],
        ["rectify", "--vid", "abc_0", "--npz_folder", "{d}/npz", "--output_folder", "{d}/npz"],
        ["predict", "--checkpoint", "{d}/m.pth", "--video", "{d}/v.mp4", "--out", "{d}"],
        ["view", "{d}/npz/abc_0.npz", "--videos", "{d}/raw", "--out", "{d}/raw/abc_0.rrd"],
        ["poses", "--npz", "{d}/npz", "--videos", "{d}/raw", "--out", "{d}/raw/qa.json"],
        ["eval-pointmaps", "--pred", "{d}/pred", "--ref", "{d}/ref", "--out", "{d}/ref/e.json"],
        ["eval-tracksto4d", "--checkpoint", "{d}/m.pt", "--npz", "{d}/npz", "--out", "{d}/npz"],
        ["eval-dynadust3r", "--checkpoint", "{d}/m.pth", "--npz", "{d}/npz", "--out", "{d}/m.pth"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_writing_command_refuses_an_output_inside_an_input(argv, tmp_path, capsys):
    for folder in ("run", "npz", "raw", "pred", "ref"):
        (tmp_path / folder).mkdir()
    args = [a.format(d=tmp_path) for a in argv]
    if args[0] == "predict":  # the output folder holds the input video: refused by name only
        args[-1] = str(tmp_path)
        (tmp_path / "v.mp4").write_bytes(b"")
        args[args.index("--video") + 1] = str(tmp_path / "prediction.npz")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "overlaps" in err and f"{argv[0]}: error:" in err and err.count("\n") == 1, err


# --- 2: listings --------------------------------------------------------------------------------


def test_a_symlink_loop_is_listed_as_a_file_and_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "loop.npz").symlink_to(tmp_path / "loop.npz")
    (tmp_path / "good.npz").write_bytes(b"x")
    assert [Path(p).name for p in fs.list_files(str(tmp_path), ".npz")] == [
        "good.npz",
        "loop.npz",
    ]
    with pytest.raises(OSError, match="loop.npz"):
        fs.input_size(str(tmp_path / "loop.npz"))


@pytest.mark.parametrize(
    ("name", "video_id"),
    [
        ("abcDEF-_123.mp4", "abcDEF-_123"),
        ("UPPER.MP4", "UPPER"),
        ("My trip (2024) [dQw4w9WgXcQ].webm", "dQw4w9WgXcQ"),
        ("A001C002_240101_R1AB.MOV", "A001C002_240101_R1AB"),
    ],
)
def test_video_names_give_ids(name: str, video_id: str) -> None:
    assert video_id_of_name(name) == video_id


def test_camera_names_give_distinct_valid_ids() -> None:
    from s4d_ray.io.ids import validate_video_id

    spaced, underscored = video_id_of_name("IMG 0001.MOV"), video_id_of_name("IMG_0001.MOV")
    assert spaced.startswith("IMG-0001-") and underscored == "IMG_0001"
    long_name = video_id_of_name("é" * 300 + ".mkv")
    assert validate_video_id(long_name) == long_name


def test_video_lookup_reads_every_container_in_any_case_and_refuses_duplicates(tmp_path):
    names = ("one.mp4", "Two [two].WEBM", "three.MkV", "dup.mp4", "Other [dup].mov", "x.txt")
    for name in (*names, "A [dup2].mkv", "B [dup2].webm"):
        (tmp_path / name).write_bytes(b"")
    videos, duplicates = list_videos(str(tmp_path))
    assert sorted(videos) == ["one", "three", "two"]
    assert [d.video_id for d in duplicates] == ["dup", "dup2"]
    assert "dup.mp4" in str(duplicates[0]) and "Other [dup].mov" in str(duplicates[0])
    assert find_video(str(tmp_path), "two").endswith("Two [two].WEBM")
    assert find_video(str(tmp_path), "dup").endswith("dup.mp4")  # the release's own name
    with pytest.raises(VideoError, match="given by 2 files"):
        find_video(str(tmp_path), "dup2")
    with pytest.raises(VideoError, match="no raw video of id 'four'"):
        find_video(str(tmp_path), "four")
    assert issubclass(DuplicateVideoError, ValueError)


# --- 6: odd videos are refused at the clips stage, naming the file ---------------------------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("far_start", r"1100000000000000 µs, outside \[0, 999999999999999\]"),
        ("duplicate_times", "frame 3 is at 67000 µs, not after the previous frame's 67000 µs"),
        ("rotated", "rotate it by -90°"),
        ("size_change", "96×48 px, the stream 128×64"),
        ("raw_stream", "no presentation time"),
        ("tiny", "8×8 px are too small"),
        ("huge", "16384×8192 px .* exceed the limit of 67108864 pixels; raise it with S4D_MAX"),
    ],
)
def test_odd_videos_are_refused_naming_the_file(odd_videos, kind, message):
    with pytest.raises(VideoError, match=message) as info:
        list(iter_video_frames(odd_videos[kind], kind))
    assert info.value.stage == "clips" and kind in str(info.value)


def test_the_frame_cap_is_raised_by_its_environment_variable(odd_videos, monkeypatch):
    monkeypatch.setenv("S4D_MAX_FRAME_PIXELS", str(16384 * 8192))
    assert [frame.shape for _, frame in iter_video_frames(odd_videos["huge"])] == [(8192, 16384, 3)]


@pytest.mark.slow  # a subprocess per measurement (imports ~1.5 s each)
def test_a_huge_frame_costs_nothing_before_its_refusal(odd_videos):
    imports = "from s4d_ray.ownvideo.clips import iter_video_frames\nfrom s4d_ray.errors import VideoError\n"
    baseline, _ = peak_rss_of(imports)
    rss, out = peak_rss_of(
        imports + "try:\n"
        f"    list(iter_video_frames({odd_videos['huge']!r}))\n"
        "except VideoError as e:\n    print('REFUSED', e)\n"
    )
    assert "REFUSED" in out
    print(f"huge frame: peak {rss >> 20} MiB, baseline {baseline >> 20} MiB")
    assert rss - baseline < 500 << 20  # decoded, the frame alone is 384 MiB of RGB


def test_a_video_whose_times_make_no_clip_id_is_a_failure_not_a_crash(odd_videos, tmp_path):
    """Once, the clip id was built outside the per-clip `try`: UnsafeIdError escaped
    prepare_video and failed the whole job, on every re-run."""
    config = OwnVideoConfig(clips=ClipConfig(min_clip_frames=2))
    outcome = prepare_video(odd_videos["far_start"], "far_start", str(tmp_path), config)
    assert outcome.npz_uris == []
    [failure] = outcome.failures
    assert (failure.clip_id, failure.stage) == ("far_start", "calibration")
    assert "far_start.mp4" in failure.message and "outside [0," in failure.message
    assert os.path.exists(tmp_path / "ownvideo" / "videos" / "far_start.json")  # not redone


@pytest.mark.parametrize(
    ("pts", "previous", "message"),
    [
        (-10, None, r"at -333333 µs, outside \[0,"),  # a Matroska start offset of −330 ms
        (None, None, "no presentation time"),
        (3, 100000, "not after the previous frame's 100000 µs"),
    ],
)
def test_frame_times_that_no_clip_can_use_are_refused(pts, previous, message):
    import av
    import numpy as np

    from s4d_ray.io.video import checked_time_us

    frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
    frame.pts = pts
    with pytest.raises(ValueError, match=message):
        checked_time_us(frame, Fraction(1, 30), previous, "'v.mp4': frame 0")
    frame.pts = 30
    assert checked_time_us(frame, Fraction(1, 30), None, "'v.mp4': frame 0") == 1_000_000
