"""Bad own-video inputs made from a good synthetic VR180 video (for tests and the benchmark)."""

from __future__ import annotations

import shutil
import struct
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from s4d_ray.io.video import write_video
from s4d_ray.ownvideo.clips import iter_video_frames


def one_synthetic_video(tmp_path: Path, frames: int, seed: int) -> tuple[Path, Path]:
    """(a folder holding one synthetic 512-line video of `frames` frames, that video): what a
    user's own-video folder looks like (no npz beside it)."""
    from s4d_ray.synthetic.synth import SynthConfig, synth_clip

    config = SynthConfig(clips=1, frames=frames, height=512, seed=seed)
    synth_clip(str(tmp_path / "synth"), config, 0)
    videos = tmp_path / "videos"
    videos.mkdir()
    video = next((tmp_path / "synth" / "raw").glob("*.mp4"))
    return videos, Path(shutil.copy(video, videos / video.name))


def make_bad_videos(good_video: str, out_dir: Path, fps: float = 30.0) -> dict[str, str]:
    """Write four bad videos beside each other; returns {kind: path}.

    mono: each frame is the left eye stretched over the whole SBS frame (the two halves show
    different content, as a monoscopic 2:1 video); static: the first frame repeated; flat: no
    texture at all (a uniform frame whose brightness drifts, so it is not frozen); short: the
    first 5 frames.
    """
    frames = [frame for _, frame in iter_video_frames(good_video)]
    height, width = frames[0].shape[:2]
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {
        "monovid": [cv2.resize(f[:, : width // 2], (width, height)) for f in frames],
        "staticvid": [frames[0]] * len(frames),
        "flatvid": [np.full_like(frames[0], 90 + 2 * i) for i in range(len(frames))],
        "shortvid": frames[:5],
    }
    paths = {}
    for name, video in made.items():
        path = out_dir / f"{name}.mp4"
        write_video(str(path), video, fps=fps)
        paths[name] = str(path)
    return paths


def _mux_packets(path: str, fmt: str, packets_of, rate: int = 30) -> None:
    """Write a one-stream container whose packets come from `packets_of(stream)` (a
    generator of packets, free to rewrite their times)."""
    with av.open(path, "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"bf": "0"}
        for packet in packets_of(stream):
            container.mux(packet)


def _encoded(stream, frames: list[np.ndarray]):
    stream.height, stream.width = frames[0].shape[:2]
    for frame in [*frames, None]:
        picture = None if frame is None else av.VideoFrame.from_ndarray(frame, format="rgb24")
        yield from stream.encode(picture)


def _mjpeg_packets(stream, frames: list[np.ndarray], rate: int = 30):
    """MJPEG packets of `frames` (sizes may differ: each JPEG stands alone) for `stream`."""
    for index, frame in enumerate(frames):
        codec = av.CodecContext.create("mjpeg", "w")
        codec.height, codec.width = frame.shape[:2]
        codec.pix_fmt = "yuvj420p"
        codec.time_base = Fraction(1, rate)
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuvj420p")
        picture.pts = index
        for packet in [*codec.encode(picture), *codec.encode(None)]:
            packet.stream = stream
            packet.pts = packet.dts = index
            packet.time_base = Fraction(1, rate)
            yield packet


def make_odd_videos(out_dir: Path, frames: int = 10) -> dict[str, str]:
    """Small videos that are valid files but not usable VR180 videos, each named `.mp4`
    (as users rename them); returns {kind: path}.

    far_start: Matroska whose first frame is at 1.1e15 µs (16 digits: no clip id can hold
    it); duplicate_times: two frames at one time; rotated: an MP4 whose track matrix asks
    for a 90° display rotation; size_change: MJPEG frames of 128×64 then 96×48; raw_stream:
    a raw H.264 elementary stream (no frame times); tiny: 8×8 frames; huge: one black MJPEG
    frame of 16384×8192 (a few MB declaring 400 MB of RGB)."""
    rng = np.random.default_rng(0)
    # both halves alike, as a stereo pair's: the probe's content check lets them through to
    # the checks each file is made for
    pictures = [
        np.tile(rng.integers(0, 255, (64, 64, 3), np.uint8), (1, 2, 1)) for _ in range(frames)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: str(out_dir / f"{kind}.mp4") for kind in (
        "far_start", "duplicate_times", "rotated", "size_change", "raw_stream", "tiny", "huge"
    )}  # fmt: skip

    def shifted(stream):
        for packet in _encoded(stream, pictures):
            shift = int(round(1.1e9 / packet.time_base))  # 1.1e9 s = 1.1e15 µs
            packet.pts += shift
            packet.dts += shift
            yield packet

    def duplicated(stream):
        for packet in _encoded(stream, pictures):
            if packet.pts >= 3:  # frames 3 and 2 share one time
                packet.pts -= 1
                packet.dts -= 1
            yield packet

    _mux_packets(paths["far_start"], "matroska", shifted)
    _mux_packets(paths["duplicate_times"], "matroska", duplicated)
    _mux_packets(paths["raw_stream"], "h264", lambda s: _encoded(s, pictures))
    _mux_packets(paths["tiny"], "mp4", lambda s: _encoded(s, [p[:8, :8] for p in pictures]))
    write_video(paths["rotated"], pictures)
    data = bytearray(Path(paths["rotated"]).read_bytes())
    matrix = data.find(b"tkhd") - 4 + 48  # version-0 tkhd: the 3×3 matrix after 48 bytes
    one = 1 << 16
    struct.pack_into(">9i", data, matrix, 0, one, 0, -one, 0, 0, 0, 0, 1 << 30)
    Path(paths["rotated"]).write_bytes(data)
    halves = pictures[:5] + [p[:48, :96] for p in pictures[5:]]
    for kind, images in (("size_change", halves), ("huge", [np.zeros((8192, 16384, 3), np.uint8)])):
        with av.open(paths[kind], "w", format="matroska") as container:
            stream = container.add_stream("mjpeg", rate=30)
            stream.height, stream.width = images[0].shape[:2]
            stream.pix_fmt = "yuvj420p"
            for packet in _mjpeg_packets(stream, images):
                container.mux(packet)
    return paths
