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


def numbered_frames(count: int) -> list[np.ndarray]:
    """Frame k shows k in binary as 8 black or white 8-px bars (any k < 256, through H.264)."""
    out = []
    for k in range(count):
        image = np.zeros((16, 64, 3), np.uint8)
        for bit in range(8):
            image[:, 8 * bit : 8 * bit + 8] = 255 * ((k >> bit) & 1)
        out.append(image)
    return out


def number_of(grey: np.ndarray) -> int:
    return sum(int(grey[:, 8 * bit + 4].mean() > 127) << bit for bit in range(8))


def test_sample_frames_seeks_keyframes_or_reads_through_holding_at_most_count(tmp_path):
    """Calibration's samples (`sample_frames`): with a keyframe at least every 10 frames, one
    decode per sample, spread over the whole video; with one keyframe in 200 frames, one read-through
    keeping every k-th frame (k from the stream's frame count), never more than `count`."""
    from s4d_ray.io.video import DecodeCount, sample_frames

    gop10, gop_default = str(tmp_path / "gop10.mp4"), str(tmp_path / "gop250.mp4")
    write_video(gop10, numbered_frames(200), fps=FPS, keyframe_interval=10)
    write_video(gop_default, numbered_frames(200), fps=FPS)

    tally = DecodeCount()
    frames, how = sample_frames(gop10, 12, tally=tally)
    numbers = [number_of(f) for f in frames]
    assert how == "keyframes" and tally.decoded == 12 and tally.rgb == 0
    assert len(numbers) == 12 and numbers == sorted(set(numbers))  # 12 distinct keyframes
    assert numbers[0] < 20 and numbers[-1] >= 180 and frames[0].ndim == 2

    tally = DecodeCount()
    frames, how = sample_frames(gop_default, 12, tally=tally)
    numbers = [number_of(f) for f in frames]
    assert how == "sequential" and tally.decoded == 12 + 200  # the tries, then one read
    assert len(frames) == 12 and numbers == list(range(0, 200, 17))[:12]
