"""Spherical and stereo metadata of video files: read it, and write it into MP4.

Reads Spherical Video V2 (`st3d`, `sv3d` boxes in the video sample entry of an MP4/MOV;
`StereoMode` and `Projection` elements of a Matroska/WebM video track) and Spherical Video V1
(the RDF/XML `uuid` box in an MP4 video track). Only headers are read: the media data (`mdat`,
Matroska `Cluster`s) is skipped by seeking, and every box/element size is checked against the
file size and a cap before anything is read, so a small file declaring a huge header raises
SphericalMetadataError instead of allocating.

Angles are degrees. fov_bounds is (yaw_left, yaw_right, tilt_top, tilt_bottom) of the frame on
the sphere, with tilt positive downwards (y points down): a 180x180 VR180 eye is
(-90, 90, -90, 90), a full equirectangular sphere (-180, 180, -90, 90).
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import struct
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import numpy as np

from s4d_ray.errors import S4DError

MAX_MOOV_BYTES = 256 * 2**20
"""Largest `moov` box read (bytes): its sample tables grow with the video's length."""

MAX_TRACKS_BYTES = 16 * 2**20
"""Largest Matroska `Tracks` element read (bytes)."""

MAX_EBML_HEADER_BYTES = 64 * 2**10
"""Largest Matroska EBML header read (bytes); real ones are a few dozen."""

MAX_ELEMENTS = 1_000_000
"""Most top-level boxes / Segment children walked before a file is refused as malformed."""

STEREO_MODES = ("mono", "left-right", "right-left", "top-bottom", "bottom-top", "custom")
PROJECTIONS = ("equirect", "cubemap", "mesh", "rectangular")

_FIXED_0_32 = 2**32
_FIXED_16_16 = 2**16

# MP4 (ISO BMFF)
_MP4_FIRST_BOXES = {
    b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"pdin",
}  # fmt: skip
_VISUAL_SAMPLE_ENTRY_FIELDS = 78  # bytes of fixed fields after the box header
_ST3D_MODES = {0: "mono", 1: "top-bottom", 2: "left-right", 3: "custom", 4: "right-left"}
_ST3D_CODES = {"mono": 0, "top-bottom": 1, "left-right": 2}
_V1_UUID = bytes.fromhex("ffcc8263f8554a938814587a02521fdd")
_V1_NAMESPACE = "{http://ns.google.com/videos/1.0/spherical/}"
_V1_STEREO = {"mono": "mono", "left-right": "left-right", "top-bottom": "top-bottom"}
_METADATA_SOURCE = "s4d-ray"

# Matroska (EBML)
_EBML = 0x1A45DFA3
_DOC_TYPE = 0x4282
_SEGMENT = 0x18538067
_TRACKS = 0x1654AE6B
_CLUSTER = 0x1F43B675
_TRACK_ENTRY = 0xAE
_TRACK_TYPE = 0x83
_VIDEO = 0xE0
_STEREO_MODE = 0x53B8
_PROJECTION = 0x7670
_PROJECTION_TYPE = 0x7671
_PROJECTION_PRIVATE = 0x7672
_PROJECTION_POSE = (0x7673, 0x7674, 0x7675)  # yaw, pitch, roll
# SeekHead, Info, Tracks, Cues, Chapters, Tags, Attachments, Cluster
_SEGMENT_CHILDREN = {0x114D9B74, 0x1549A966, _TRACKS, 0x1C53BB6B, 0x1043A770, 0x1254C367}
_SEGMENT_CHILDREN |= {0x1941A469, _CLUSTER}
_MKV_NAMES = {
    _SEGMENT: "Segment",
    _TRACKS: "Tracks",
    _CLUSTER: "Cluster",
    0x114D9B74: "SeekHead",
    0x1549A966: "Info",
    0x1C53BB6B: "Cues",
    0x1043A770: "Chapters",
    0x1254C367: "Tags",
    0x1941A469: "Attachments",
    0xEC: "Void",
    _TRACK_ENTRY: "TrackEntry",
    _VIDEO: "Video",
    _PROJECTION: "Projection",
}
_MKV_STEREO = {0: "mono", 1: "left-right", 2: "bottom-top", 3: "top-bottom", 11: "right-left"}
_MKV_PROJECTION = {0: "rectangular", 1: "equirect", 2: "cubemap", 3: "mesh"}


class SphericalMetadataError(S4DError, ValueError):
    """A malformed, truncated or oversized header; the message names the file and the box or
    element."""


@dataclass(frozen=True)
class SphericalMetadata:
    """Stereo layout and projection of a video's first video track.

    container: "mp4" (MP4/MOV/ISO BMFF), "matroska" (Matroska or WebM) or "unknown".
    stereo_mode: one of STEREO_MODES, or None when the file has no stereo metadata.
    projection: one of PROJECTIONS, or None when the file has no projection metadata.
    fov_bounds: equirect only: (yaw_left, yaw_right, tilt_top, tilt_bottom) in degrees, tilt
        positive downwards (VR180: (-90, 90, -90, 90); full sphere: (-180, 180, -90, 90)).
    pose_deg: (yaw, pitch, roll) in degrees of the projection (MP4 `prhd`, Matroska
        ProjectionPose*), None when absent.
    sources: where each fact came from, e.g. ("st3d", "sv3d/proj/equi").
    """

    container: str
    stereo_mode: str | None = None
    projection: str | None = None
    fov_bounds: tuple[float, float, float, float] | None = None
    pose_deg: tuple[float, float, float] | None = None
    sources: tuple[str, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        """A plain dict of str, float, list and None (tuples become lists)."""
        return {
            "container": self.container,
            "stereo_mode": self.stereo_mode,
            "projection": self.projection,
            "fov_bounds": None if self.fov_bounds is None else list(self.fov_bounds),
            "pose_deg": None if self.pose_deg is None else list(self.pose_deg),
            "sources": list(self.sources),
        }


class _Source:
    """A seekable binary file, its name for messages, and its size."""

    def __init__(self, file: IO[bytes], name: str) -> None:
        self.file = file
        self.name = name
        self.size = file.seek(0, os.SEEK_END)

    def error(self, message: str) -> SphericalMetadataError:
        return SphericalMetadataError(f"{self.name}: {message}")

    def read_at(self, offset: int, count: int, what: str) -> bytes:
        """Exactly `count` bytes at `offset`, after checking they lie inside the file."""
        if offset < 0 or count < 0 or offset + count > self.size:
            raise self.error(
                f"{what} at byte {offset} needs {count} bytes but the file ends at byte "
                f"{self.size} (truncated or corrupt)"
            )
        self.file.seek(offset)
        parts = []
        left = count
        while left > 0:
            chunk = self.file.read(left)
            if not chunk:
                raise self.error(f"{what} at byte {offset}: the file ended while reading it")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)


def _fourcc(kind: bytes) -> str:
    return kind.decode("latin-1").encode("unicode_escape").decode("ascii")


def _file_name(file: Any) -> str:
    name = getattr(file, "name", None)
    return os.fsdecode(name) if isinstance(name, str | bytes | os.PathLike) else repr(file)


def read_spherical_metadata(file: str | os.PathLike | IO[bytes]) -> SphericalMetadata:
    """The stereo layout, projection, field of view (degrees) and pose (degrees) of the first
    video track of `file` (a path, or a seekable binary file object: its position is restored).

    Reads headers only. Raises SphericalMetadataError (naming the file) for a truncated,
    malformed or oversized header; a file of no known container gives container "unknown".
    """
    if isinstance(file, str | os.PathLike):
        path = os.fspath(file)
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            raise SphericalMetadataError(f"{path}: cannot read: {e}") from e
        if not stat.S_ISREG(mode):
            raise SphericalMetadataError(f"{path}: not a regular file")
        with open(path, "rb", buffering=0) as handle:  # unbuffered: read headers only
            return _read(_Source(handle, path))
    if not getattr(file, "seekable", lambda: False)():
        raise SphericalMetadataError(f"{_file_name(file)}: the file object is not seekable")
    start = file.tell()
    try:
        return _read(_Source(file, _file_name(file)))
    finally:
        file.seek(start)


def _read(src: _Source) -> SphericalMetadata:
    head = src.read_at(0, min(12, src.size), "file header")
    if len(head) >= 8 and head[4:8] in _MP4_FIRST_BOXES:
        return _read_mp4(src)
    if head[:4] == _EBML.to_bytes(4, "big"):
        return _read_matroska(src)
    return SphericalMetadata("unknown")


# ---------------------------------------------------------------------------------------------
# MP4


@dataclass(frozen=True)
class _Box:
    kind: bytes
    start: int  # offset of the box header
    payload: int  # offset of the first byte after the header
    end: int  # offset one past the box

    @property
    def header(self) -> int:
        return self.payload - self.start


def _top_level_boxes(src: _Source) -> list[_Box]:
    """The file's top-level boxes (headers only), each checked to lie inside the file."""
    boxes: list[_Box] = []
    offset = 0
    while offset < src.size:
        if len(boxes) >= MAX_ELEMENTS:
            raise src.error(f"more than {MAX_ELEMENTS} top-level boxes")
        if src.size - offset < 8:
            raise src.error(
                f"{src.size - offset} stray bytes at byte {offset} are too short for a box "
                "header (truncated or corrupt)"
            )
        size, kind = struct.unpack(">I4s", src.read_at(offset, 8, "box header"))
        header = 8
        if size == 1:
            what = f"box '{_fourcc(kind)}' largesize"
            (size,) = struct.unpack(">Q", src.read_at(offset + 8, 8, what))
            header = 16
        elif size == 0:
            size = src.size - offset
        if size < header:
            raise src.error(f"box '{_fourcc(kind)}' at byte {offset} declares {size} bytes")
        if offset + size > src.size:
            raise src.error(
                f"box '{_fourcc(kind)}' at byte {offset} declares {size} bytes but only "
                f"{src.size - offset} are left in the file (truncated or corrupt)"
            )
        boxes.append(_Box(kind, offset, offset + header, offset + size))
        offset += size
    return boxes


def _children(
    buf: bytes | bytearray, start: int, end: int, where: str, src: _Source
) -> tuple[list[_Box], int]:
    """The boxes in buf[start:end] and the offset where they stop (a 32-bit zero terminator or
    fewer than 8 trailing bytes end the list and are left alone)."""
    boxes: list[_Box] = []
    pos = start
    while end - pos >= 8:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        if size == 0:
            break
        header = 8
        if size == 1:
            if end - pos < 16:
                raise src.error(f"box '{_fourcc(kind)}' in {where}: truncated largesize")
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header = 16
        if size < header or pos + size > end:
            raise src.error(
                f"box '{_fourcc(kind)}' in {where} declares {size} bytes but its parent has "
                f"{end - pos} left"
            )
        boxes.append(_Box(kind, pos, pos + header, pos + size))
        pos += size
    return boxes, pos


def _child(
    buf: bytes | bytearray, parent: _Box, kind: bytes, where: str, src: _Source
) -> _Box | None:
    boxes, _ = _children(buf, parent.payload, parent.end, where, src)
    return next((box for box in boxes if box.kind == kind), None)


def _read_moov(src: _Source, boxes: list[_Box]) -> tuple[_Box, bytes]:
    moov = next((box for box in boxes if box.kind == b"moov"), None)
    if moov is None:
        raise src.error("no 'moov' box (truncated, or not a complete MP4)")
    size = moov.end - moov.start
    if size > MAX_MOOV_BYTES:
        raise src.error(f"box 'moov' declares {size} bytes, over the cap of {MAX_MOOV_BYTES}")
    return moov, src.read_at(moov.start, size, "box 'moov'")


def _video_chain(buf: bytes | bytearray, moov: _Box, src: _Source) -> list[_Box] | None:
    """[moov, trak, mdia, minf, stbl, stsd, sample entry] of the first video track (offsets
    in `buf`, the moov box), or None when there is no video track."""
    moov = _Box(b"moov", 0, moov.header, len(buf))
    traks, _ = _children(buf, moov.payload, moov.end, "moov", src)
    for trak in traks:
        if trak.kind != b"trak":
            continue
        mdia = _child(buf, trak, b"mdia", "moov/trak", src)
        hdlr = None if mdia is None else _child(buf, mdia, b"hdlr", "moov/trak/mdia", src)
        if mdia is None or hdlr is None or hdlr.end - hdlr.payload < 12:
            continue
        if buf[hdlr.payload + 8 : hdlr.payload + 12] != b"vide":
            continue
        chain = [moov, trak, mdia]
        where = "moov/trak/mdia"
        for kind in (b"minf", b"stbl", b"stsd"):
            box = _child(buf, chain[-1], kind, where, src)
            where += "/" + kind.decode()
            if box is None:
                raise src.error(f"video track without {where}")
            chain.append(box)
        stsd = chain[-1]
        if stsd.end - stsd.payload < 8:
            raise src.error(f"{where} is too short")
        entries, _ = _children(buf, stsd.payload + 8, stsd.end, where, src)
        if not entries:
            raise src.error(f"{where} has no sample entry")
        entry = entries[0]
        if entry.end - entry.payload < _VISUAL_SAMPLE_ENTRY_FIELDS:
            raise src.error(f"sample entry '{_fourcc(entry.kind)}' in {where} is too short")
        return [*chain, entry]
    return None


def _read_mp4(src: _Source) -> SphericalMetadata:
    moov, buf = _read_moov(src, _top_level_boxes(src))
    chain = _video_chain(buf, moov, src)
    if chain is None:
        return SphericalMetadata("mp4")
    entry = chain[-1]
    where = f"video sample entry '{_fourcc(entry.kind)}'"
    boxes, _ = _children(buf, entry.payload + _VISUAL_SAMPLE_ENTRY_FIELDS, entry.end, where, src)
    stereo = projection = fov = pose = None
    sources: list[str] = []
    for box in boxes:
        if box.kind == b"st3d" and stereo is None:
            if box.end - box.payload < 5:
                raise src.error(f"box 'st3d' in {where} is too short")
            stereo = _ST3D_MODES.get(buf[box.payload + 4], "custom")
            sources.append("st3d")
        elif box.kind == b"sv3d" and projection is None:
            projection, fov, pose, found = _read_sv3d(buf, box, src)
            sources.extend(found)
    trak = chain[1]
    v1 = None
    for box in _children(buf, trak.payload, trak.end, "moov/trak", src)[0]:
        if box.kind == b"uuid" and buf[box.payload : box.payload + 16] == _V1_UUID:
            v1 = _parse_v1_xml(buf[box.payload + 16 : box.end], src)
            break
    if v1 is not None:
        v1_stereo, v1_projection, v1_fov = v1
        if stereo is None and v1_stereo is not None:
            stereo = v1_stereo
            sources.append("spherical v1 xml")
        if projection is None and v1_projection is not None:
            projection, fov = v1_projection, v1_fov
            if "spherical v1 xml" not in sources:
                sources.append("spherical v1 xml")
    return SphericalMetadata("mp4", stereo, projection, fov, pose, tuple(sources))


def _read_sv3d(
    buf: bytes, sv3d: _Box, src: _Source
) -> tuple[str | None, tuple | None, tuple | None, list[str]]:
    """(projection, fov_bounds, pose_deg, sources) from an `sv3d` box."""
    projection = fov = pose = None
    sources: list[str] = []
    proj = _child(buf, sv3d, b"proj", "sv3d", src)
    if proj is None:
        return projection, fov, pose, sources
    for box in _children(buf, proj.payload, proj.end, "sv3d/proj", src)[0]:
        size = box.end - box.payload
        name = f"sv3d/proj/{_fourcc(box.kind)}"
        if box.kind == b"prhd" and pose is None:
            if size < 16:
                raise src.error(f"box '{name}' is too short")
            yaw, pitch, roll = struct.unpack_from(">3i", buf, box.payload + 4)
            pose = (yaw / _FIXED_16_16, pitch / _FIXED_16_16, roll / _FIXED_16_16)
            sources.append(name)
        elif box.kind in (b"equi", b"cbmp", b"mshp") and projection is None:
            if box.kind == b"equi":
                if size < 20:
                    raise src.error(f"box '{name}' is too short")
                fov = _equi_to_fov(buf[box.payload : box.payload + 20], name, src)
            projection = {b"equi": "equirect", b"cbmp": "cubemap", b"mshp": "mesh"}[box.kind]
            sources.append(name)
    return projection, fov, pose, sources


def _equi_to_fov(payload: bytes, where: str, src: _Source) -> tuple[float, float, float, float]:
    """fov_bounds (degrees) from an `equi` FullBox payload (version/flags + 4 uint32, 0.32)."""
    top, bottom, left, right = struct.unpack_from(">4I", payload, 4)
    if top + bottom >= _FIXED_0_32 or left + right >= _FIXED_0_32:
        raise src.error(f"{where}: projection bounds crop away the whole frame")
    return (
        -180.0 + 360.0 * left / _FIXED_0_32,
        180.0 - 360.0 * right / _FIXED_0_32,
        -90.0 + 180.0 * top / _FIXED_0_32,
        90.0 - 180.0 * bottom / _FIXED_0_32,
    )


def _parse_v1_xml(data: bytes, src: _Source):
    """(stereo_mode, projection, fov_bounds) from Spherical Video V1 RDF/XML."""
    data = data.rstrip(b"\0 \t\r\n")
    lowered = data.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise src.error("spherical v1 xml: DOCTYPE/ENTITY declarations are refused")
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as e:
        raise src.error(f"spherical v1 xml: {e}") from e
    fields = {}
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith(_V1_NAMESPACE):
            fields[element.tag[len(_V1_NAMESPACE) :]] = (element.text or "").strip()
    stereo = fields.get("StereoMode")
    if stereo is not None:
        stereo = _V1_STEREO.get(stereo.lower(), "custom")
    projection = fov = None
    if fields.get("ProjectionType", "").lower() == "equirectangular":
        projection = "equirect"
        fov = _v1_fov(fields)
    return stereo, projection, fov


def _v1_fov(fields: dict[str, str]) -> tuple[float, float, float, float] | None:
    """fov_bounds from the V1 cropped-area fields: the full sphere when they are absent, None
    when they are inconsistent."""
    names = ("CroppedAreaImageWidthPixels", "CroppedAreaImageHeightPixels")
    full = ("FullPanoWidthPixels", "FullPanoHeightPixels")
    if not any(name in fields for name in (*names, *full)):
        return (-180.0, 180.0, -90.0, 90.0)
    try:
        width, height = (int(fields[name]) for name in names)
        full_width, full_height = (int(fields[name]) for name in full)
        left = int(fields.get("CroppedAreaLeftPixels", "0"))
        top = int(fields.get("CroppedAreaTopPixels", "0"))
    except (KeyError, ValueError):
        return None
    if min(full_width, full_height, width, height) <= 0:
        return None
    if left < 0 or top < 0 or left + width > full_width or top + height > full_height:
        return None
    yaw_left = -180.0 + 360.0 * left / full_width
    tilt_top = -90.0 + 180.0 * top / full_height
    return (
        yaw_left,
        yaw_left + 360.0 * width / full_width,
        tilt_top,
        tilt_top + 180.0 * height / full_height,
    )


# ---------------------------------------------------------------------------------------------
# Matroska / WebM


def _name(element: int) -> str:
    """An element's name for messages: 'Tracks', or 'element 0x1A2B' when not known here."""
    return _MKV_NAMES.get(element, f"element 0x{element:X}")


def _ebml_header(buf: bytes, pos: int, end: int, where: str, src: _Source):
    """(element id, payload size or None when unknown, header length) at buf[pos:end]."""
    if pos >= end:
        raise src.error(f"{where}: element header truncated")
    first = buf[pos]
    id_length = 9 - first.bit_length() if first else 9
    if id_length > 4:
        raise src.error(f"{where}: invalid element id byte 0x{first:02X}")
    if pos + id_length >= end:
        raise src.error(f"{where}: element header truncated")
    element = int.from_bytes(buf[pos : pos + id_length], "big")
    pos += id_length
    first = buf[pos]
    size_length = 9 - first.bit_length() if first else 9
    if size_length > 8:
        raise src.error(f"{where}: invalid size of {_name(element)}")
    if pos + size_length > end:
        raise src.error(f"{where}: header of {_name(element)} truncated")
    raw = int.from_bytes(buf[pos : pos + size_length], "big")
    value_bits = 7 * size_length
    size: int | None = raw & ((1 << value_bits) - 1)
    if size == (1 << value_bits) - 1:
        size = None  # unknown size
    return element, size, id_length + size_length


def _file_element(src: _Source, offset: int, end: int, where: str):
    """(element id, size or None, header length) of the element at file byte `offset`, reading
    the header's bytes only (never the payload)."""
    what = f"{where} element header"
    head = src.read_at(offset, 1, what)
    id_length = 9 - head[0].bit_length() if head[0] else 9
    if id_length <= 4:
        head = src.read_at(offset, min(id_length + 1, end - offset), what)
        if len(head) == id_length + 1:
            size_length = 9 - head[-1].bit_length() if head[-1] else 9
            if size_length <= 8:
                head = src.read_at(offset, min(id_length + size_length, end - offset), what)
    return _ebml_header(head, 0, len(head), f"{where} at byte {offset}", src)


def _ebml_children(buf: bytes, start: int, end: int, where: str, src: _Source):
    """(id, payload start, payload end) of the elements in buf[start:end]; an unknown size
    runs to the end of the parent."""
    pos = start
    out = []
    while pos < end:
        element, size, header = _ebml_header(buf, pos, end, where, src)
        payload = pos + header
        stop = end if size is None else payload + size
        if stop > end:
            raise src.error(
                f"{_name(element)} in {where} declares {size} bytes but its parent has "
                f"{end - payload} left"
            )
        out.append((element, payload, stop))
        pos = stop
    return out


def _ebml_uint(buf: bytes, start: int, end: int, name: str, src: _Source) -> int:
    if end - start > 8:
        raise src.error(f"{name}: unsigned integer of {end - start} bytes")
    return int.from_bytes(buf[start:end], "big")


def _ebml_float(buf: bytes, start: int, end: int, name: str, src: _Source) -> float:
    size = end - start
    if size == 0:
        return 0.0
    if size not in (4, 8):
        raise src.error(f"{name}: float of {size} bytes")
    return struct.unpack(">f" if size == 4 else ">d", buf[start:end])[0]


def _read_matroska(src: _Source) -> SphericalMetadata:
    element, size, header = _file_element(src, 0, src.size, "EBML header")
    if size is None or size > MAX_EBML_HEADER_BYTES:
        raise src.error(f"EBML header declares {size} bytes (cap {MAX_EBML_HEADER_BYTES})")
    body = src.read_at(header, size, "EBML header")
    doc_type = ""
    for child, start, stop in _ebml_children(body, 0, len(body), "EBML header", src):
        if child == _DOC_TYPE:
            doc_type = body[start:stop].rstrip(b"\0").decode("ascii", "replace")
    if doc_type not in ("matroska", "webm"):
        return SphericalMetadata("unknown")

    offset = header + size
    segment_end = None
    while offset < src.size:  # level 0: Void/CRC elements may precede the Segment
        element, size, header = _file_element(src, offset, src.size, "top level")
        if element == _SEGMENT:
            segment_end = src.size if size is None else offset + header + size
            if segment_end > src.size:
                raise src.error(
                    f"Segment at byte {offset} declares {size} bytes but only "
                    f"{src.size - offset - header} are left in the file (truncated or corrupt)"
                )
            offset += header
            break
        if size is None or offset + header + size > src.size:
            raise src.error(f"{_name(element)} at byte {offset} overruns the file")
        offset += header + size
    if segment_end is None:
        raise src.error("no Matroska Segment (truncated, or not a complete file)")

    count = 0
    while offset < segment_end:
        count += 1
        if count > MAX_ELEMENTS:
            raise src.error(f"more than {MAX_ELEMENTS} Segment children before Tracks")
        element, size, header = _file_element(src, offset, segment_end, "Segment child")
        payload = offset + header
        if size is None:
            if element == _CLUSTER:
                offset = _skip_unknown_cluster(src, payload, segment_end)
                continue
            if element != _TRACKS:
                raise src.error(f"{_name(element)} at byte {offset} has an unknown size")
            size = segment_end - payload
        if payload + size > segment_end:
            raise src.error(
                f"{_name(element)} at byte {offset} declares {size} bytes but only "
                f"{segment_end - payload} are left in the Segment (truncated or corrupt)"
            )
        if element == _TRACKS:
            if size > MAX_TRACKS_BYTES:
                raise src.error(f"Tracks declares {size} bytes, over the cap {MAX_TRACKS_BYTES}")
            return _parse_tracks(src.read_at(payload, size, "Tracks"), src)
        offset = payload + size  # skip (Clusters unread)
    return SphericalMetadata("matroska")


def _skip_unknown_cluster(src: _Source, offset: int, end: int) -> int:
    """The end of a Cluster of unknown size starting its payload at `offset`: where the next
    Segment-level element begins (children are skipped by their headers only)."""
    count = 0
    while offset < end:
        count += 1
        if count > MAX_ELEMENTS:
            raise src.error(f"more than {MAX_ELEMENTS} elements in a Cluster")
        element, size, header = _file_element(src, offset, end, "Cluster child")
        if element in _SEGMENT_CHILDREN:
            return offset
        if size is None or offset + header + size > end:
            raise src.error(f"Cluster child {_name(element)} at byte {offset} overruns the Segment")
        offset += header + size
    return end


def _parse_tracks(buf: bytes, src: _Source) -> SphericalMetadata:
    for element, start, stop in _ebml_children(buf, 0, len(buf), "Tracks", src):
        if element != _TRACK_ENTRY:
            continue
        children = _ebml_children(buf, start, stop, "TrackEntry", src)
        track_type = next(
            (_ebml_uint(buf, a, b, "TrackType", src) for e, a, b in children if e == _TRACK_TYPE),
            None,
        )
        if track_type != 1:
            continue
        video = next(((a, b) for e, a, b in children if e == _VIDEO), None)
        if video is None:
            return SphericalMetadata("matroska")
        return _parse_video(buf, *video, src)
    return SphericalMetadata("matroska")


def _parse_video(buf: bytes, start: int, stop: int, src: _Source) -> SphericalMetadata:
    stereo = projection = fov = pose = None
    sources = []
    for element, a, b in _ebml_children(buf, start, stop, "Video", src):
        if element == _STEREO_MODE:
            stereo = _MKV_STEREO.get(_ebml_uint(buf, a, b, "StereoMode", src), "custom")
            sources.append("matroska StereoMode")
        elif element == _PROJECTION:
            kind, private, angles = 0, None, [0.0, 0.0, 0.0]
            for child, c, d in _ebml_children(buf, a, b, "Projection", src):
                if child == _PROJECTION_TYPE:
                    kind = _ebml_uint(buf, c, d, "ProjectionType", src)
                elif child == _PROJECTION_PRIVATE:
                    private = buf[c:d]
                elif child in _PROJECTION_POSE:
                    index = _PROJECTION_POSE.index(child)
                    angles[index] = _ebml_float(buf, c, d, "ProjectionPose", src)
            projection = _MKV_PROJECTION.get(kind)
            pose = (angles[0], angles[1], angles[2])
            if projection == "equirect":
                private = bytes(20) if private is None else private
                if len(private) < 20:
                    raise src.error(f"ProjectionPrivate of {len(private)} bytes (equirect: 20)")
                fov = _equi_to_fov(private, "ProjectionPrivate", src)
            sources.append("matroska Projection")
    return SphericalMetadata("matroska", stereo, projection, fov, pose, tuple(sources))


# ---------------------------------------------------------------------------------------------
# Writing Spherical Video V2 into MP4


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full_box(kind: bytes, payload: bytes) -> bytes:
    return _box(kind, bytes(4) + payload)  # version 0, flags 0


def _spherical_boxes(
    stereo_mode: str,
    projection: str,
    fov_bounds: tuple[float, float, float, float],
    pose_deg: tuple[float, float, float],
) -> bytes:
    """`st3d` + `sv3d` for the arguments of write_spherical_mp4 (ValueError when invalid)."""
    if stereo_mode in ("right-left", "bottom-top"):
        raise ValueError(
            f"stereo_mode {stereo_mode!r} cannot be expressed in an st3d box (it has only mono, "
            "top-bottom and left-right): swap the eyes in the frames instead"
        )
    if stereo_mode not in _ST3D_CODES:
        raise ValueError(f"stereo_mode must be one of {sorted(_ST3D_CODES)}, not {stereo_mode!r}")
    if projection != "equirect":
        raise ValueError(f"only the 'equirect' projection can be written, not {projection!r}")
    yaw_left, yaw_right, tilt_top, tilt_bottom = (float(v) for v in fov_bounds)
    if not all(math.isfinite(v) for v in (yaw_left, yaw_right, tilt_top, tilt_bottom)) or not (
        -180.0 <= yaw_left < yaw_right <= 180.0 and -90.0 <= tilt_top < tilt_bottom <= 90.0
    ):
        raise ValueError(
            "fov_bounds must be (yaw_left, yaw_right, tilt_top, tilt_bottom) degrees with "
            f"-180 <= yaw_left < yaw_right <= 180 and -90 <= tilt_top < tilt_bottom <= 90, "
            f"not {tuple(fov_bounds)}"
        )
    crops = (  # top, bottom, left, right
        (tilt_top + 90) / 180,
        (90 - tilt_bottom) / 180,
        (yaw_left + 180) / 360,
        (180 - yaw_right) / 360,
    )
    fixed = [min(round(crop * _FIXED_0_32), _FIXED_0_32 - 1) for crop in crops]
    if fixed[0] + fixed[1] >= _FIXED_0_32 or fixed[2] + fixed[3] >= _FIXED_0_32:
        raise ValueError(f"fov_bounds {tuple(fov_bounds)} are too narrow to express")
    angles = tuple(float(v) for v in pose_deg)
    limits = (180.0, 90.0, 180.0)
    if len(angles) != 3 or not all(
        math.isfinite(a) and abs(a) <= limit for a, limit in zip(angles, limits, strict=True)
    ):
        raise ValueError(
            f"pose_deg must be (yaw, pitch, roll) degrees within ±180, ±90, ±180, not {pose_deg}"
        )
    pose = [round(a * _FIXED_16_16) for a in angles]
    st3d = _full_box(b"st3d", bytes([_ST3D_CODES[stereo_mode]]))
    svhd = _full_box(b"svhd", _METADATA_SOURCE.encode() + b"\0")
    prhd = _full_box(b"prhd", struct.pack(">3i", *pose))
    equi = _full_box(b"equi", struct.pack(">4I", *fixed))
    return st3d + _box(b"sv3d", svhd + _box(b"proj", prhd + equi))


def _grow_size(buf: bytearray, box: _Box, delta: int, src: _Source) -> None:
    """Add `delta` to the size field of `box` in `buf` (a size of 0, to the end of the file,
    stays 0)."""
    if box.header == 16:
        (size,) = struct.unpack_from(">Q", buf, box.start + 8)
        struct.pack_into(">Q", buf, box.start + 8, size + delta)
        return
    (size,) = struct.unpack_from(">I", buf, box.start)
    if size == 0:
        return
    if not 8 <= size + delta <= 0xFFFFFFFF:
        raise src.error(f"box '{_fourcc(box.kind)}' would outgrow its 32-bit size field")
    struct.pack_into(">I", buf, box.start, size + delta)


def _shift_chunk_offsets(buf: bytearray, moov: _Box, after: int, delta: int, src: _Source):
    """Add `delta` to every stco/co64 chunk offset >= `after` (data that moves with the
    bytes behind the old moov), in every track of `buf` (the moov box)."""
    traks, _ = _children(buf, moov.header, len(buf), "moov", src)
    for trak in traks:
        if trak.kind != b"trak":
            continue
        box: _Box | None = trak
        where = "moov/trak"
        for kind in (b"mdia", b"minf", b"stbl"):
            if box is None:
                break
            box = _child(buf, box, kind, where, src)
            where += "/" + kind.decode()
        if box is None:
            continue
        for table in _children(buf, box.payload, box.end, where, src)[0]:
            if table.kind == b"saio":
                raise src.error(f"{where}/saio: sample auxiliary offsets would move; not supported")
            if table.kind not in (b"stco", b"co64"):
                continue
            width = 4 if table.kind == b"stco" else 8
            (count,) = struct.unpack_from(">I", buf, table.payload + 4)
            start = table.payload + 8
            if table.end - table.payload < 8 or start + count * width > table.end:
                raise src.error(f"{where}/{table.kind.decode()} holds fewer entries than it says")
            dtype = ">u4" if width == 4 else ">u8"
            offsets = np.frombuffer(buf, dtype, count, start).astype(np.int64)
            moved = np.where(offsets >= after, offsets + delta, offsets)
            if count and (moved.min() < 0 or moved.max() >= 2 ** (8 * width)):
                raise src.error(
                    f"{where}/{table.kind.decode()}: shifted chunk offsets overflow the field"
                )
            buf[start : start + count * width] = moved.astype(dtype).tobytes()


def write_spherical_mp4(
    path: str | os.PathLike,
    stereo_mode: str,
    projection: str = "equirect",
    fov_bounds: tuple[float, float, float, float] = (-90.0, 90.0, -90.0, 90.0),
    pose_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> None:
    """Inject Spherical Video V2 metadata (`st3d`, `sv3d` with an `equi` projection) into the
    video sample entry of the MP4 at `path`, rewriting the file atomically.

    stereo_mode: "mono", "top-bottom" or "left-right". fov_bounds: (yaw_left, yaw_right,
    tilt_top, tilt_bottom) in degrees, tilt positive downwards; stored in 0.32 fixed point
    (about 1e-7 degree). pose_deg: (yaw, pitch, roll) degrees, stored in 16.16 fixed point
    (about 2e-5 degree). Existing st3d/sv3d boxes are replaced; the enclosing box sizes and,
    when the moov precedes the media data, the stco/co64 chunk offsets are updated.
    Raises ValueError for arguments st3d/equi cannot express, SphericalMetadataError for a
    file that is not a complete, unfragmented MP4 with a video track.
    """
    boxes_to_insert = _spherical_boxes(stereo_mode, projection, fov_bounds, pose_deg)
    path = os.fspath(path)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise SphericalMetadataError(f"{path}: not a regular file")
    with open(path, "rb") as handle:
        src = _Source(handle, path)
        head = src.read_at(0, min(8, src.size), "file header")
        if len(head) < 8 or head[4:8] not in _MP4_FIRST_BOXES:
            raise src.error("not an MP4/ISO BMFF file")
        top = _top_level_boxes(src)
        if any(box.kind == b"moof" for box in top):
            raise src.error("fragmented MP4 ('moof' boxes) is not supported")
        moov, data = _read_moov(src, top)
        buf = bytearray(data)
        chain = _video_chain(buf, moov, src)
        if chain is None:
            raise src.error("no video track to put the metadata on")
        entry = chain[-1]
        where = f"video sample entry '{_fourcc(entry.kind)}'"
        fields_end = entry.payload + _VISUAL_SAMPLE_ENTRY_FIELDS
        children, stop = _children(buf, fields_end, entry.end, where, src)
        kept = [box for box in children if box.kind not in (b"st3d", b"sv3d")]
        # st3d/sv3d go before the optional clap/pasp boxes (Spherical Video V2), else last
        at = next((i for i, box in enumerate(kept) if box.kind in (b"clap", b"pasp")), len(kept))
        body = b"".join(bytes(buf[box.start : box.end]) for box in kept[:at])
        body += boxes_to_insert
        body += b"".join(bytes(buf[box.start : box.end]) for box in kept[at:])
        body += bytes(buf[stop : entry.end])  # trailing bytes (e.g. a zero terminator) stay
        new_entry = bytearray(buf[entry.start : fields_end]) + body
        delta = len(new_entry) - (entry.end - entry.start)
        if entry.header == 16:
            struct.pack_into(">Q", new_entry, 8, len(new_entry))
        elif len(new_entry) > 0xFFFFFFFF:
            raise src.error(f"{where} would outgrow its 32-bit size field")
        else:
            struct.pack_into(">I", new_entry, 0, len(new_entry))
        for box in chain[:-1]:
            _grow_size(buf, box, delta, src)
        buf[entry.start : entry.end] = new_entry
        if delta:
            _shift_chunk_offsets(buf, chain[0], moov.end, delta, src)
        _replace_range(src, moov.start, moov.end, bytes(buf))


def _replace_range(src: _Source, start: int, end: int, data: bytes) -> None:
    """Rewrite src's file with bytes [start, end) replaced by `data`, atomically (a temp file
    in the same folder, then os.replace; the file's permission bits are kept)."""
    path = src.name
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_range(src, 0, start, out)
            out.write(data)
            _copy_range(src, end, src.size, out)
            out.flush()
            os.fsync(out.fileno())
        shutil.copymode(path, temp)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def _copy_range(src: _Source, start: int, end: int, out: BinaryIO) -> None:
    chunk = 4 * 2**20
    for offset in range(start, end, chunk):
        out.write(src.read_at(offset, min(chunk, end - offset), "media data"))
