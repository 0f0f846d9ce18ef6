"""Spherical/stereo metadata: reading MP4 (V1 and V2) and Matroska/WebM headers, and writing
Spherical Video V2 boxes into MP4 files made by PyAV."""

from __future__ import annotations

import io
import json
import shutil
import struct
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from s4d_ray.io import spherical
from s4d_ray.io.spherical import (
    SphericalMetadata,
    SphericalMetadataError,
    read_spherical_metadata,
    write_spherical_mp4,
)

FRAMES = 6
VR180 = (-90.0, 90.0, -90.0, 90.0)
SPHERE = (-180.0, 180.0, -90.0, 90.0)


def _noise(count: int = FRAMES, height: int = 32, width: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 255, (height, width, 3), np.uint8) for _ in range(count)]


def _encode(path: Path, fmt: str, codec: str, options=None, metadata=None, sar=None) -> Path:
    """A small video of noise frames written by PyAV; `metadata` goes on the video stream."""
    frames = _noise()
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=30)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        for key, value in (metadata or {}).items():
            stream.metadata[key] = value
        for frame in [*frames, None]:
            picture = None if frame is None else av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
    return path


def _decode(path: Path) -> list[np.ndarray]:
    """Every decoded frame's yuv420p planes, exactly as FFmpeg decodes them."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray() for frame in container.decode(video=0)]


def _top_boxes(data: bytes) -> dict[bytes, tuple[int, int, int]]:
    """{type: (start, payload start, end)} of the top-level boxes (32-bit sizes)."""
    boxes, pos = {}, 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        boxes.setdefault(kind, (pos, pos + 8, pos + size))
        pos += size
    return boxes


@pytest.fixture(scope="module")
def base_videos(tmp_path_factory) -> dict[str, tuple[Path, list[np.ndarray]]]:
    """{"plain" (moov after mdat), "faststart" (moov first): (mp4 path, decoded frames)}."""
    folder = tmp_path_factory.mktemp("spherical_base")
    made = {}
    for name, options in (("plain", None), ("faststart", {"movflags": "faststart"})):
        path = _encode(folder / f"{name}.mp4", "mp4", "libx264", options=options)
        made[name] = (path, _decode(path))
    data = made["plain"][0].read_bytes()
    assert _top_boxes(data)[b"mdat"][0] < _top_boxes(data)[b"moov"][0]
    data = made["faststart"][0].read_bytes()
    assert _top_boxes(data)[b"moov"][0] < _top_boxes(data)[b"mdat"][0]
    return made


def _copy(base_videos, name: str, tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    source, frames = base_videos[name]
    path = tmp_path / f"{name}.mp4"
    shutil.copy(source, path)
    return path, frames


# --- MP4 write → read ------------------------------------------------------------------------


CASES = {
    "left-right 180x180": ("left-right", VR180, (0.0, 0.0, 0.0)),
    "top-bottom 360x180": ("top-bottom", SPHERE, (0.0, 0.0, 0.0)),
    "mono 360x180": ("mono", SPHERE, (0.0, 0.0, 0.0)),
    "left-right 180x150": ("left-right", (-90.0, 90.0, -75.0, 75.0), (0.0, 0.0, 0.0)),
    "posed off-centre crop": ("top-bottom", (-100.0, 60.5, -80.0, 33.3), (12.5, -7.25, 1.1)),
}


@pytest.mark.parametrize("layout", ["plain", "faststart"])
@pytest.mark.parametrize("case", list(CASES))
def test_write_then_read_round_trips_and_frames_still_decode(base_videos, tmp_path, case, layout):
    stereo, fov, pose = CASES[case]
    path, frames = _copy(base_videos, layout, tmp_path)
    before = path.read_bytes()
    write_spherical_mp4(path, stereo, fov_bounds=fov, pose_deg=pose)
    after = path.read_bytes()

    meta = read_spherical_metadata(path)
    assert meta.container == "mp4"
    assert meta.stereo_mode == stereo
    assert meta.projection == "equirect"
    np.testing.assert_allclose(meta.fov_bounds, fov, rtol=0, atol=1e-6)
    np.testing.assert_allclose(meta.pose_deg, pose, rtol=0, atol=1e-4)
    assert meta.sources == ("st3d", "sv3d/proj/prhd", "sv3d/proj/equi")

    # the media data is byte-identical, only moved (faststart) or untouched (plain)
    grown = len(after) - len(before)
    assert grown == 13 + 8 + (12 + len("s4d-ray") + 1) + 8 + 24 + 28
    old_mdat, new_mdat = _top_boxes(before)[b"mdat"], _top_boxes(after)[b"mdat"]
    assert before[old_mdat[0] : old_mdat[2]] == after[new_mdat[0] : new_mdat[2]]
    assert new_mdat[0] - old_mdat[0] == (grown if layout == "faststart" else 0)
    # every chunk offset points at the right bytes: the frames decode exactly as before
    decoded = _decode(path)
    assert len(decoded) == FRAMES
    for old, new in zip(frames, decoded, strict=True):
        np.testing.assert_array_equal(old, new)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("layout", ["plain", "faststart"])
def test_rewrite_replaces_boxes_even_when_they_shrink(base_videos, tmp_path, monkeypatch, layout):
    path, frames = _copy(base_videos, layout, tmp_path)
    monkeypatch.setattr(spherical, "_METADATA_SOURCE", "a much longer metadata source " * 4)
    write_spherical_mp4(path, "top-bottom", fov_bounds=SPHERE, pose_deg=(90.0, 45.0, -30.0))
    long_size = path.stat().st_size
    monkeypatch.undo()
    write_spherical_mp4(path, "left-right")  # replaces the larger boxes: moov shrinks
    data = path.read_bytes()
    assert len(data) < long_size
    assert data.count(b"st3d") == data.count(b"sv3d") == data.count(b"equi") == 1
    meta = read_spherical_metadata(path)
    assert (meta.stereo_mode, meta.fov_bounds, meta.pose_deg) == ("left-right", VR180, (0, 0, 0))
    for old, new in zip(frames, _decode(path), strict=True):
        np.testing.assert_array_equal(old, new)


def test_boxes_go_before_pasp(tmp_path):
    path = _encode(tmp_path / "sar.mp4", "mp4", "libx264", sar=Fraction(2, 1))
    write_spherical_mp4(path, "mono")
    data = path.read_bytes()
    assert data.index(b"avcC") < data.index(b"st3d") < data.index(b"sv3d") < data.index(b"pasp")
    assert read_spherical_metadata(path).stereo_mode == "mono"


def test_ffmpeg_understands_the_written_boxes(base_videos, tmp_path):
    """FFmpeg's MP4 demuxer turns st3d/sv3d into stream side data and its Matroska muxer writes
    that as StereoMode + Projection: a stream copy to .mkv must read back the same metadata
    (this also covers reading a Projection element FFmpeg itself wrote)."""
    path, _ = _copy(base_videos, "faststart", tmp_path)
    fov, pose = (-90.0, 90.0, -75.0, 75.0), (10.0, -5.5, 3.25)
    write_spherical_mp4(path, "top-bottom", fov_bounds=fov, pose_deg=pose)
    mkv = tmp_path / "copy.mkv"
    with av.open(str(path)) as source, av.open(str(mkv), "w", format="matroska") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    meta = read_spherical_metadata(mkv)
    assert meta.container == "matroska"
    assert meta.sources == ("matroska StereoMode", "matroska Projection")
    assert (meta.stereo_mode, meta.projection) == ("top-bottom", "equirect")
    np.testing.assert_allclose(meta.fov_bounds, fov, rtol=0, atol=1e-6)
    np.testing.assert_allclose(meta.pose_deg, pose, rtol=0, atol=1e-4)


def test_plain_video_has_no_metadata_and_json_dict(base_videos):
    meta = read_spherical_metadata(base_videos["plain"][0])
    assert meta == SphericalMetadata("mp4", None, None, None, None, ())
    assert json.loads(json.dumps(meta.to_json_dict())) == {
        "container": "mp4",
        "stereo_mode": None,
        "projection": None,
        "fov_bounds": None,
        "pose_deg": None,
        "sources": [],
    }


def test_reads_file_objects_and_only_headers(base_videos, tmp_path):
    """A binary file object works (its position is restored) and no byte of mdat is read."""
    path, _ = _copy(base_videos, "faststart", tmp_path)
    write_spherical_mp4(path, "left-right")
    data = path.read_bytes()
    spy = _SpyFile(data, "spy.mp4")
    spy.seek(5)
    meta = read_spherical_metadata(spy)
    assert spy.tell() == 5
    assert meta.stereo_mode == "left-right"
    assert meta.to_json_dict()["fov_bounds"] == list(VR180)
    _, payload, end = _top_boxes(data)[b"mdat"]
    assert spy.reads and not [r for r in spy.reads if r[0] < end and r[1] > payload]


class _SpyFile(io.BytesIO):
    """An in-memory file that records the byte ranges read from it."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name
        self.reads: list[tuple[int, int]] = []

    def read(self, size: int | None = -1) -> bytes:
        start = self.tell()
        out = super().read(size)
        self.reads.append((start, start + len(out)))
        return out


# --- refusing bad arguments and bad files ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stereo_mode": "right-left"}, "cannot be expressed in an st3d"),
        ({"stereo_mode": "bottom-top"}, "cannot be expressed in an st3d"),
        ({"stereo_mode": "custom"}, "stereo_mode must be one of"),
        ({"stereo_mode": "mono", "projection": "cubemap"}, "only the 'equirect'"),
        ({"stereo_mode": "mono", "fov_bounds": (90.0, -90.0, -90.0, 90.0)}, "fov_bounds"),
        ({"stereo_mode": "mono", "fov_bounds": (-90.0, 90.0, -91.0, 90.0)}, "fov_bounds"),
        ({"stereo_mode": "mono", "pose_deg": (0.0, 91.0, 0.0)}, "pose_deg"),
    ],
)
def test_write_refuses_what_st3d_and_equi_cannot_hold(base_videos, tmp_path, kwargs, message):
    path, _ = _copy(base_videos, "plain", tmp_path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        write_spherical_mp4(path, **kwargs)
    assert path.read_bytes() == before


def test_write_refuses_non_mp4(tmp_path):
    path = _encode(tmp_path / "v.mkv", "matroska", "libx264")
    with pytest.raises(SphericalMetadataError, match="not an MP4"):
        write_spherical_mp4(path, "mono")


@pytest.mark.parametrize("layout", ["plain", "faststart"])
def test_truncated_mp4_raises_naming_the_file(base_videos, tmp_path, layout):
    source, _ = base_videos[layout]
    data = source.read_bytes()
    moov = _top_boxes(data)[b"moov"]
    for cut in (len(data) // 2, len(data) - 3, moov[0] + 40):
        path = tmp_path / f"cut{cut}.mp4"
        path.write_bytes(data[:cut])
        with pytest.raises(SphericalMetadataError, match=str(path)):
            read_spherical_metadata(path)


def test_truncated_matroska_raises(tmp_path):
    data = _encode(tmp_path / "v.mkv", "matroska", "libx264").read_bytes()
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SphericalMetadataError, match="cut.mkv.*Segment"):
        read_spherical_metadata(path)


FTYP = struct.pack(">I4s4sI8s", 24, b"ftyp", b"isom", 512, b"isomiso2")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("moov32.mp4", FTYP + struct.pack(">I4s", 0xFFFFFFF0, b"moov"), "box 'moov'"),
        ("moov64.mp4", FTYP + struct.pack(">I4sQ", 1, b"moov", 2**40), "box 'moov'"),
        ("mdat64.mp4", FTYP + struct.pack(">I4sQ", 1, b"mdat", 2**62), "box 'mdat'"),
        ("segment.mkv", None, "Segment"),
        ("tracks.webm", None, "Tracks"),
    ],
)
def test_huge_declared_sizes_raise_fast_without_allocating(tmp_path, name, data, message):
    if name == "segment.mkv":
        data = _ebml_header("matroska") + _element(_SEGMENT, b"")[:4] + _size(2**50)
    elif name == "tracks.webm":
        data = _ebml_header("webm") + _unknown_size(_SEGMENT) + _int_id(_TRACKS) + _size(2**32)
    path = tmp_path / name
    path.write_bytes(data + bytes(2048 - len(data)))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(SphericalMetadataError, match=rf"{name}.*{message}"):
            read_spherical_metadata(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 2**20


def test_moov_over_the_cap_raises(base_videos, monkeypatch):
    monkeypatch.setattr(spherical, "MAX_MOOV_BYTES", 256)
    with pytest.raises(SphericalMetadataError, match="moov.*cap"):
        read_spherical_metadata(base_videos["plain"][0])


def test_unknown_container(tmp_path):
    (tmp_path / "notes.txt").write_text("not a video at all")
    assert read_spherical_metadata(tmp_path / "notes.txt") == SphericalMetadata("unknown")
    (tmp_path / "empty").write_bytes(b"")
    assert read_spherical_metadata(tmp_path / "empty").container == "unknown"


# --- Spherical Video V1 ----------------------------------------------------------------------


def _v1_xml(stereo: str, extra: str = "") -> bytes:
    return (
        '<?xml version="1.0"?><rdf:SphericalVideo '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:GSpherical="http://ns.google.com/videos/1.0/spherical/">'
        "<GSpherical:Spherical>true</GSpherical:Spherical>"
        "<GSpherical:Stitched>true</GSpherical:Stitched>"
        "<GSpherical:StitchingSoftware>test</GSpherical:StitchingSoftware>"
        "<GSpherical:ProjectionType>equirectangular</GSpherical:ProjectionType>"
        f"<GSpherical:StereoMode>{stereo}</GSpherical:StereoMode>{extra}"
        "</rdf:SphericalVideo>"
    ).encode()


def _with_v1_box(source: Path, target: Path, xml: bytes) -> Path:
    """Copy a moov-last MP4 with a V1 `uuid` box appended to its (only) video trak."""
    data = bytearray(source.read_bytes())
    moov_start, moov_payload, moov_end = _top_boxes(bytes(data))[b"moov"]
    assert moov_end == len(data)
    pos = moov_payload
    while data[pos + 4 : pos + 8] != b"trak":
        pos += struct.unpack_from(">I", data, pos)[0]
    trak_end = pos + struct.unpack_from(">I", data, pos)[0]
    box = struct.pack(">I4s", 8 + 16 + len(xml), b"uuid")
    box += bytes.fromhex("ffcc8263f8554a938814587a02521fdd") + xml
    for start in (moov_start, pos):
        struct.pack_into(">I", data, start, struct.unpack_from(">I", data, start)[0] + len(box))
    data[trak_end:trak_end] = box
    target.write_bytes(bytes(data))
    return target


def test_spherical_v1_xml(base_videos, tmp_path):
    source = base_videos["plain"][0]
    crop = (
        "<GSpherical:CroppedAreaImageWidthPixels>2000</GSpherical:CroppedAreaImageWidthPixels>"
        "<GSpherical:CroppedAreaImageHeightPixels>1500</GSpherical:CroppedAreaImageHeightPixels>"
        "<GSpherical:FullPanoWidthPixels>4000</GSpherical:FullPanoWidthPixels>"
        "<GSpherical:FullPanoHeightPixels>2000</GSpherical:FullPanoHeightPixels>"
        "<GSpherical:CroppedAreaLeftPixels>1000</GSpherical:CroppedAreaLeftPixels>"
        "<GSpherical:CroppedAreaTopPixels>250</GSpherical:CroppedAreaTopPixels>"
    )
    path = _with_v1_box(source, tmp_path / "v1.mp4", _v1_xml("top-bottom", crop))
    assert _decode(path)  # still a valid file
    assert read_spherical_metadata(path) == SphericalMetadata(
        "mp4", "top-bottom", "equirect", (-90.0, 90.0, -67.5, 67.5), None, ("spherical v1 xml",)
    )

    plain = _with_v1_box(source, tmp_path / "v1_sphere.mp4", _v1_xml("left-right"))
    meta = read_spherical_metadata(plain)
    assert (meta.stereo_mode, meta.fov_bounds) == ("left-right", SPHERE)

    write_spherical_mp4(path, "mono")  # V2 takes priority over V1
    meta = read_spherical_metadata(path)
    assert (meta.stereo_mode, meta.fov_bounds) == ("mono", VR180)
    assert "spherical v1 xml" not in meta.sources


def test_spherical_v1_refuses_entities(base_videos, tmp_path):
    xml = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>' + _v1_xml("mono")[21:]
    path = _with_v1_box(base_videos["plain"][0], tmp_path / "bomb.mp4", xml)
    with pytest.raises(SphericalMetadataError, match="bomb.mp4.*DOCTYPE"):
        read_spherical_metadata(path)


# --- Matroska / WebM -------------------------------------------------------------------------

# FFmpeg's Matroska muxer maps the stream tag `stereo_mode` (its names, or the number) to
# StereoMode; WebM accepts only the layouts WebM allows (block_lr is refused there).
MKV_TAGS = [
    ("left_right", "left-right"),
    ("right_left", "right-left"),
    ("top_bottom", "top-bottom"),
    ("bottom_top", "bottom-top"),
    ("mono", "mono"),
    ("1", "left-right"),
    ("block_lr", "custom"),
]


@pytest.mark.parametrize(("tag", "expected"), MKV_TAGS)
def test_matroska_stereo_mode_from_pyav(tmp_path, tag, expected):
    path = _encode(tmp_path / "v.mkv", "matroska", "libx264", metadata={"stereo_mode": tag})
    assert read_spherical_metadata(path) == SphericalMetadata(
        "matroska", expected, None, None, None, ("matroska StereoMode",)
    )


@pytest.mark.parametrize(("tag", "expected"), [("left_right", "left-right"), ("top_bottom", "top-bottom")])  # fmt: skip
def test_webm_stereo_mode_from_pyav(tmp_path, tag, expected):
    path = _encode(tmp_path / "v.webm", "webm", "libvpx-vp9", metadata={"stereo_mode": tag})
    meta = read_spherical_metadata(path)
    assert (meta.container, meta.stereo_mode, meta.projection) == ("matroska", expected, None)


def test_matroska_without_stereo_tag(tmp_path):
    path = _encode(tmp_path / "v.mkv", "matroska", "libx264")
    assert read_spherical_metadata(path) == SphericalMetadata("matroska")


_SEGMENT, _TRACKS, _CLUSTER = 0x18538067, 0x1654AE6B, 0x1F43B675


def _int_id(element: int) -> bytes:
    return element.to_bytes((element.bit_length() + 7) // 8, "big")


def _size(size: int) -> bytes:
    return (0x01 << 56 | size).to_bytes(8, "big")  # 8-byte EBML size


def _element(element: int, payload: bytes) -> bytes:
    return _int_id(element) + _size(len(payload)) + payload


def _unknown_size(element: int) -> bytes:
    return _int_id(element) + b"\x01" + b"\xff" * 7


def _uint(element: int, value: int) -> bytes:
    return _element(element, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _ebml_header(doc_type: str) -> bytes:
    return _element(0x1A45DFA3, _uint(0x4286, 1) + _element(0x4282, doc_type.encode()))


def _synthetic_matroska(stereo: int, projection: bytes, unknown_cluster: bool) -> bytes:
    """Segment: Info, a Cluster (of known or unknown size) full of 0xAB media bytes, then
    Tracks (an audio track, then the video track) — Tracks after the Clusters."""
    media = _uint(0xE7, 0) + _element(0xA3, b"\xab" * 4000)
    cluster = (_unknown_size(_CLUSTER) + media) if unknown_cluster else _element(_CLUSTER, media)
    audio = _element(0xAE, _uint(0xD7, 2) + _uint(0x83, 2))
    video_body = _uint(0xB0, 64) + _uint(0xBA, 32) + _uint(0x53B8, stereo) + projection
    video = _element(0xAE, _uint(0xD7, 1) + _element(0xE0, video_body) + _uint(0x83, 1))
    body = _element(0x1549A966, _uint(0x2AD7B1, 1000000)) + cluster
    body += _element(_TRACKS, audio + video)
    return _ebml_header("webm") + _unknown_size(_SEGMENT) + body


def test_matroska_projection_after_clusters_without_reading_them():
    private = struct.pack(">I4I", 0, 2**30, 2**30, 2**29, 2**29)  # top, bottom, left, right
    projection = _element(
        0x7670,
        _uint(0x7671, 1)
        + _element(0x7672, private)
        + _element(0x7673, struct.pack(">d", -20.5))
        + _element(0x7674, struct.pack(">f", 4.25))
        + _element(0x7675, struct.pack(">d", 0.125)),
    )
    for unknown_cluster in (False, True):
        data = _synthetic_matroska(11, projection, unknown_cluster)
        spy = _SpyFile(data, "synthetic.webm")
        meta = read_spherical_metadata(spy)
        assert meta == SphericalMetadata(
            "matroska",
            "right-left",
            "equirect",
            (-135.0, 135.0, -45.0, 45.0),
            (-20.5, 4.25, 0.125),
            ("matroska StereoMode", "matroska Projection"),
        )
        media = data.index(b"\xab" * 4000)
        assert not [r for r in spy.reads if r[0] < media + 4000 and r[1] > media]


@pytest.mark.parametrize(
    ("body", "projection", "fov"),
    [
        (_uint(0x7671, 1), "equirect", SPHERE),  # no ProjectionPrivate: all bounds 0
        (_uint(0x7671, 2) + _element(0x7672, bytes(12)), "cubemap", None),
        (_uint(0x7671, 3) + _element(0x7672, bytes(16)), "mesh", None),
        (_uint(0x7671, 0), "rectangular", None),
    ],
)
def test_matroska_projection_types(body, projection, fov):
    data = _synthetic_matroska(3, _element(0x7670, body), unknown_cluster=False)
    meta = read_spherical_metadata(io.BytesIO(data))
    assert (meta.stereo_mode, meta.projection, meta.fov_bounds) == ("top-bottom", projection, fov)
    assert meta.pose_deg == (0.0, 0.0, 0.0)
