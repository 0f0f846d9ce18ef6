"""Video encode/decode: URIs, and which frame a timestamp selects (as the reference does)."""

from __future__ import annotations

import os

import cv2
import numpy as np

from s4d_ray.io.video import (
    decode_frames_at,
    decode_threads,
    open_video_stream,
    probe_video,
    write_video,
)

FPS = 25  # 40 000 µs per frame: halfway timestamps are whole microseconds


def grey_frames(count: int) -> list[np.ndarray]:
    """Frame k is uniformly grey at level 20·k + 10 (tells frames apart after H.264)."""
    return [np.full((32, 48, 3), 20 * k + 10, np.uint8) for k in range(count)]


def frame_number(image: np.ndarray) -> int:
    return int(round((float(image.mean()) - 10) / 20))


def test_write_video_to_a_file_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the old bug wrote to ./file:/<path> under the cwd
    target = tmp_path / "videos" / "clip.mp4"
    assert write_video(f"file://{target}", grey_frames(3), fps=FPS) == 3
    assert target.is_file() and not (tmp_path / "file:").exists()
    info = probe_video(str(target))
    assert (info.width, info.height) == (48, 32) and info.fps == FPS
    assert not [n for n in os.listdir(target.parent) if n != "clip.mp4"]  # no temp files left


def test_halfway_timestamps_take_the_later_frame_like_opencv(tmp_path):
    path = str(tmp_path / "grey.mp4")
    write_video(path, grey_frames(8), fps=FPS)
    period = 1_000_000 // FPS
    exact = np.arange(1, 6) * period
    halfway = exact + period // 2  # exactly between frame k and k + 1
    below = halfway - 1
    ours = {
        name: [frame_number(f) for f in decode_frames_at(path, stamps)]
        for name, stamps in (("exact", exact), ("halfway", halfway), ("below", below))
    }
    assert ours == {"exact": [1, 2, 3, 4, 5], "halfway": [2, 3, 4, 5, 6], "below": [1, 2, 3, 4, 5]}

    # the reference: OpenCV seeks to frame round(t·fps) (half up) for each timestamp
    capture = cv2.VideoCapture(path)
    reference = []
    for stamp in halfway:
        capture.set(cv2.CAP_PROP_POS_MSEC, stamp / 1000)
        ok, image = capture.read()
        assert ok
        reference.append(frame_number(image))
    capture.release()
    assert reference == ours["halfway"]


def test_decode_threads_set_ffmpegs_threads_within_a_task(tmp_path):
    """A task holding N CPUs decodes with N FFmpeg threads; outside one, FFmpeg chooses."""
    path = str(tmp_path / "grey.mp4")
    write_video(path, grey_frames(4), fps=FPS)
    with open_video_stream(path, "clip", "decode") as (_, stream):
        assert stream.thread_count == 0  # FFmpeg's own choice: one per core
    with decode_threads(2), open_video_stream(path, "clip", "decode") as (_, stream):
        assert stream.thread_count == 2
    with decode_threads(0), open_video_stream(path, "clip", "decode") as (_, stream):
        assert stream.thread_count == 1  # a fractional task still decodes
    with decode_threads(1):
        assert [frame_number(f) for f in decode_frames_at(path, [0, 80_000])] == [0, 2]
