"""Stereo4D release npz: a typed clip record, validation, and I/O on any fsspec URI.

Release format (one npz per clip, `<clip_id>.npz`):
    name str, video_id str, timestamps int64 [T] µs, camera2world [T,3,4] (world<-camera of the
    rectified left eye), track_lengths int [N], track_indices int [Σlen], track_coordinates
    [Σlen,3] m (world), rectified2rig [2,3,3] (per eye, rectified->rig), fov_bounds [4] degrees
    (start/end yaw, start/end tilt of the equirect image).
Anything else in the file (our extras: visibility, colours, motion, timings...) is kept in
`ClipRecord.extras`. Nothing is ever unpickled.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from s4d_ray.errors import InputError
from s4d_ray.geometry.camera import invert_poses
from s4d_ray.io import fs
from s4d_ray.io.ids import UnsafeIdError, validate_clip_id, validate_video_id

RELEASE_FIELDS = (
    "name",
    "video_id",
    "timestamps",
    "camera2world",
    "track_lengths",
    "track_indices",
    "track_coordinates",
    "rectified2rig",
    "fov_bounds",
)

MAX_NPZ_BYTES = 1 << 30
"""Default cap on one npz: its file size and the uncompressed bytes of the members read
(from the zip headers and the array headers, checked before anything is decompressed).
A Stereo4D clip (25,000 tracks x 200 frames) needs ~0.2 GB; override with `max_bytes`
(engine config `max_npz_bytes`)."""

MAX_DENSE_BYTES = 8 << 30
"""Default cap on the NaN-filled [N,T,3] float64 array `dense_tracks` allocates."""

ROTATION_TOLERANCE = 1e-3
"""How far `rectified2rig` may be from a rotation (max |RᵀR − I|, |det R − 1|)."""

INT64_MAX = np.iinfo(np.int64).max


class ClipValidationError(InputError):
    """A clip record that is missing a field, mis-shaped or non-finite; names clip and field."""

    def __init__(self, clip_id: str, field_name: str, message: str):
        self.clip_id = clip_id
        self.field = field_name
        super().__init__(f"clip {clip_id!r}, field {field_name!r}: {message}")


@dataclass
class ClipRecord:
    """One Stereo4D clip: cameras, rig rotations, fov bounds and sparse 3D tracks.

    Arrays: timestamps [T] int64 µs; camera2world [T,3,4]; track_lengths [N]; track_indices
    [Σlen] frame index per stored point; track_coordinates [Σlen,3] m world; rectified2rig
    [2,3,3]; fov_bounds [4] deg.
    """

    name: str
    video_id: str
    timestamps: np.ndarray
    camera2world: np.ndarray
    track_lengths: np.ndarray
    track_indices: np.ndarray
    track_coordinates: np.ndarray
    rectified2rig: np.ndarray
    fov_bounds: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def num_tracks(self) -> int:
        return int(self.track_lengths.shape[0])

    def dense_tracks(self, max_bytes: int = MAX_DENSE_BYTES) -> np.ndarray:
        """Tracks as a NaN-filled [N,T,3] array, exactly as the release loader rebuilds them.

        The sparse fields are checked first (lengths, their sum, indices: a record changed
        after `validate` cannot make `np.repeat` overrun), and [N,T,3] against `max_bytes`.
        """
        self._check_tracks()
        nbytes = self.num_tracks * self.num_frames * 3 * 8
        if nbytes > max_bytes:
            raise ClipValidationError(
                self.name,
                "track_lengths",
                f"dense tracks [{self.num_tracks},{self.num_frames},3] would take {nbytes} bytes, "
                f"more than the limit of {max_bytes}",
            )
        tracks = np.full((self.num_tracks, self.num_frames, 3), np.nan)
        rows = np.repeat(np.arange(self.num_tracks), self.track_lengths)
        tracks[rows, self.track_indices] = self.track_coordinates
        return tracks

    def world2camera(self) -> np.ndarray:
        """[T,3,4] extrinsics, the inverse of camera2world."""
        return invert_poses(self.camera2world)

    @staticmethod
    def sparse_from_dense(tracks: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Release track fields from dense `tracks [N,T,3]` stored where `mask [N,T]` is true."""
        lengths = mask.sum(axis=1).astype(np.int64)
        rows, cols = np.nonzero(mask)
        return {
            "track_lengths": lengths,
            "track_indices": cols.astype(np.int64),
            "track_coordinates": tracks[rows, cols].astype(np.float32),
        }

    def _check_tracks(self) -> int:
        """Check the sparse track fields against T and each other, before any allocation
        depends on them; return L = Σ track_lengths.

        Each length must be in [0, T] (so the sum cannot wrap: N·T fits in int64), indices
        in [0, T), and the index and coordinate arrays exactly L long.
        """
        name, t = self.name, self.num_frames
        lengths = self.track_lengths
        if lengths.size:
            low, high = lengths.min(), lengths.max()  # compared in their own dtype: no wrap
            if low < 0 or high > t:
                bad = int(np.argmax((lengths < 0) | (lengths > t)))
                raise ClipValidationError(
                    name,
                    "track_lengths",
                    f"track {bad} has length {lengths[bad]}, outside [0, {t}] (T = {t} frames)",
                )
        if lengths.size * t > INT64_MAX:
            raise ClipValidationError(name, "track_lengths", f"{lengths.size} tracks x {t} frames")
        total = int(lengths.sum(dtype=np.int64))
        for field_name, arr, shape in (
            ("track_indices", self.track_indices, (total,)),
            ("track_coordinates", self.track_coordinates, (total, 3)),
        ):
            if not isinstance(arr, np.ndarray) or arr.shape != shape:
                got = list(arr.shape) if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ClipValidationError(
                    name, field_name, f"expected shape {list(shape)} (L = Σ lengths), got {got}"
                )
        indices = self.track_indices
        if total and (indices.min() < 0 or indices.max() >= t):
            raise ClipValidationError(name, "track_indices", f"frame index outside [0, {t})")
        return total

    def validate(self) -> ClipRecord:
        """Check ids, shapes, dtypes and finiteness; raise ClipValidationError naming the field."""
        name = self.name
        try:
            validate_clip_id(name)
        except UnsafeIdError as e:
            raise ClipValidationError(str(name), "name", str(e)) from None
        try:
            validate_video_id(self.video_id)
        except UnsafeIdError as e:
            raise ClipValidationError(name, "video_id", str(e)) from None

        def check(field_name: str, arr: np.ndarray, shape: tuple, kind: str) -> None:
            if not isinstance(arr, np.ndarray):
                raise ClipValidationError(name, field_name, f"expected an array, got {type(arr)}")
            if arr.ndim != len(shape) or any(
                want is not None and got != want for got, want in zip(arr.shape, shape, strict=True)
            ):
                pretty = "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"
                raise ClipValidationError(
                    name, field_name, f"expected shape {pretty}, got {list(arr.shape)}"
                )
            if arr.dtype.kind not in kind:
                raise ClipValidationError(
                    name, field_name, f"expected dtype kind {kind!r}, got {arr.dtype}"
                )
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ClipValidationError(name, field_name, "contains NaN or inf")

        t = self.timestamps.shape[0] if isinstance(self.timestamps, np.ndarray) else -1
        check("timestamps", self.timestamps, (None,), "iu")
        if t == 0:
            raise ClipValidationError(name, "timestamps", "clip has no frames")
        stamps = self.timestamps
        # compared in the array's own dtype: a uint64 past 2^63 is reported as itself
        if stamps.min() < 0 or stamps.max() > INT64_MAX:
            bad = stamps.min() if stamps.min() < 0 else stamps.max()
            raise ClipValidationError(
                name, "timestamps", f"{bad} µs is outside [0, 2^63) (int64 microseconds)"
            )
        if np.any(stamps[1:] <= stamps[:-1]):
            raise ClipValidationError(name, "timestamps", "must be non-negative and increasing")
        check("camera2world", self.camera2world, (t, 3, 4), "f")
        check("rectified2rig", self.rectified2rig, (2, 3, 3), "f")
        rig = self.rectified2rig.astype(np.float64)
        off = np.abs(rig @ rig.transpose(0, 2, 1) - np.eye(3)).max()
        det = np.linalg.det(rig)
        if off > ROTATION_TOLERANCE or np.abs(det - 1.0).max() > ROTATION_TOLERANCE:
            raise ClipValidationError(
                name,
                "rectified2rig",
                f"not a rotation per eye: max |RᵀR − I| = {off:.3g}, det = {np.round(det, 4)}",
            )
        check("fov_bounds", self.fov_bounds, (4,), "fiu")
        check("track_lengths", self.track_lengths, (None,), "iu")
        check("track_indices", self.track_indices, (None,), "iu")
        check("track_coordinates", self.track_coordinates, (None, 3), "f")
        self._check_tracks()
        fov = np.asarray(self.fov_bounds, dtype=np.float64)
        if not np.isfinite(fov).all() or fov[1] <= fov[0] or fov[3] <= fov[2]:
            raise ClipValidationError(name, "fov_bounds", f"expected start < end, got {fov}")
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """All fields (release + extras) as numpy arrays, strings as 0-d unicode arrays."""
        out = {k: np.asarray(getattr(self, k)) for k in RELEASE_FIELDS}
        for key, value in self.extras.items():
            if key in out:
                raise ClipValidationError(self.name, key, "extra field shadows a release field")
            out[key] = np.asarray(value)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: str = "") -> ClipRecord:
        """Build and validate a record from npz arrays; `source` names the file in errors."""
        clip_hint = str(arrays["name"]) if "name" in arrays else source or "<unknown>"
        missing = [k for k in RELEASE_FIELDS if k not in arrays]
        if missing:
            raise ClipValidationError(clip_hint, missing[0], f"missing from {source or 'npz'}")
        kwargs: dict[str, Any] = {k: arrays[k] for k in RELEASE_FIELDS}
        kwargs["name"] = str(kwargs["name"])
        kwargs["video_id"] = str(kwargs["video_id"])
        extras = {k: v for k, v in arrays.items() if k not in RELEASE_FIELDS}
        return cls(**kwargs, extras=extras).validate()


def npz_stem(uri: str) -> str:
    """The file name of `uri` without `.npz`, not yet validated as a clip id."""
    return uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".npz")


def clip_id_from_uri(uri: str) -> str:
    """Clip id from a `<clip_id>.npz` file name, validated."""
    return validate_clip_id(npz_stem(uri))


def _npy_header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of an .npy stream (nothing else is read)."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    return tuple(int(n) for n in shape), dtype


def npy_header_within(member: IO[bytes], available: int) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an .npy stream from its header alone, checked before any array is
    allocated: ValueError (one line, the reason) when it is not .npy, holds objects (pickle),
    or declares more bytes (shape x itemsize) than the `available` bytes of its container.

    The one header check of every .npy read from an untrusted container (npz members here,
    dense depth in `io.dense`, WebDataset members in `pointmaps.reader`)."""
    try:
        shape, dtype = _npy_header(member)
    except ValueError as e:
        raise ValueError(f"not an .npy array: {e}") from e
    if dtype.hasobject:
        raise ValueError("an object array: loading it needs pickle, never used")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > available:
        raise ValueError(
            f"header says {list(shape)} {dtype} ({nbytes} bytes) but the member "
            f"holds {available} bytes"
        )
    return shape, dtype


HeaderCheck = Callable[[str, tuple[int, ...], np.dtype], None]
"""`check(member, shape, dtype)` run on each member's .npy header before it is decompressed;
it raises to refuse (e.g. a shape that does not fit the clip)."""


def read_npz_members(
    data: bytes,
    source: str,
    names: Iterable[str] | None = None,
    max_bytes: int = MAX_NPZ_BYTES,
    check: HeaderCheck | None = None,
    fail: Callable[[str, str], Exception] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays of an npz (the members in `names`; None: all), never unpickled.

    Before anything is decompressed, the uncompressed sizes in the zip headers of the members
    read are summed against `max_bytes`, each member's array header (shape x itemsize) must
    fit in its member (`npy_header_within`), and `check` sees every header: a decompression
    bomb costs its headers, not its size. Members not asked for are never decompressed.
    `fail(member, message)` builds the error (default ClipValidationError naming `source`).
    """
    if fail is None:

        def fail(member: str, message: str) -> Exception:
            return ClipValidationError(source, member, message)

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            infos.setdefault(info.filename.removesuffix(".npy"), info)
        wanted = list(infos) if names is None else [n for n in dict.fromkeys(names) if n in infos]
        declared = sum(infos[n].file_size for n in wanted)
        if declared > max_bytes:
            biggest = max(wanted, key=lambda n: infos[n].file_size)
            raise fail(
                biggest,
                f"the members read would take {declared} bytes uncompressed "
                f"({biggest!r}: {infos[biggest].file_size}), more than the limit of {max_bytes}",
            )
        arrays = {}
        for name in wanted:
            with archive.open(infos[name]) as member:
                try:
                    shape, dtype = npy_header_within(member, infos[name].file_size)
                except ValueError as e:
                    raise fail(name, str(e)) from e
            if check is not None:
                check(name, shape, dtype)
            with archive.open(infos[name]) as member:
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


def read_clip(
    uri: str, extras: Iterable[str] | None = None, max_bytes: int = MAX_NPZ_BYTES
) -> ClipRecord:
    """Read a release npz from any fsspec URI (never unpickles); validate it.

    `extras`: which non-release members to read as well (None: all of them; () : none, as
    the engine's decode stage does). The file must be a regular file or object no larger than
    `max_bytes`, and the members read at most `max_bytes` uncompressed (see
    `read_npz_members`).
    """
    try:
        data = fs.read_bytes(uri, max_bytes=max_bytes)
    except (fs.NotRegularFileError, fs.InputTooLargeError) as e:
        raise ClipValidationError(uri, "<file>", str(e)) from e
    names = None if extras is None else [*RELEASE_FIELDS, *extras]
    try:
        arrays = read_npz_members(data, uri, names, max_bytes)
    except ClipValidationError:
        raise
    except ValueError as e:
        raise ClipValidationError(uri, "<file>", f"not a readable npz without pickle: {e}") from e
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError on truncation
        raise ClipValidationError(uri, "<file>", f"not a valid npz: {type(e).__name__}: {e}") from e
    return ClipRecord.from_arrays(arrays, source=uri)


def write_clip(record: ClipRecord, uri: str, compress: bool = True) -> None:
    """Validate and write the record as a release npz to any fsspec URI, atomically."""
    record.validate()
    buf = io.BytesIO()
    # Any: numpy's stubs would match a member named like a keyword (allow_pickle) to it
    arrays: dict[str, Any] = record.to_arrays()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    fs.write_bytes(uri, buf.getvalue())
