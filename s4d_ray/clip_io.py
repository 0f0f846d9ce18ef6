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
from dataclasses import dataclass, field

import numpy as np

from s4d_ray import fs
from s4d_ray.geometry import invert_poses
from s4d_ray.ids import UnsafeIdError, validate_clip_id, validate_video_id

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


class ClipValidationError(ValueError):
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

    def dense_tracks(self) -> np.ndarray:
        """Tracks as a NaN-filled [N,T,3] array, exactly as the release loader rebuilds them."""
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
        if np.any(np.diff(self.timestamps) <= 0) or self.timestamps[0] < 0:
            raise ClipValidationError(name, "timestamps", "must be non-negative and increasing")
        check("camera2world", self.camera2world, (t, 3, 4), "f")
        check("rectified2rig", self.rectified2rig, (2, 3, 3), "f")
        check("fov_bounds", self.fov_bounds, (4,), "fiu")
        check("track_lengths", self.track_lengths, (None,), "iu")
        total = int(self.track_lengths.sum())
        check("track_indices", self.track_indices, (total,), "iu")
        check("track_coordinates", self.track_coordinates, (total, 3), "f")
        if total and (self.track_indices.min() < 0 or self.track_indices.max() >= t):
            raise ClipValidationError(name, "track_indices", f"frame index outside [0, {t})")
        if np.any(self.track_lengths < 0):
            raise ClipValidationError(name, "track_lengths", "negative length")
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
        kwargs = {k: arrays[k] for k in RELEASE_FIELDS}
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


def read_clip(uri: str) -> ClipRecord:
    """Read a release npz from any fsspec URI (never unpickles); validate it."""
    data = fs.read_bytes(uri)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        raise ClipValidationError(uri, "<file>", f"not a readable npz without pickle: {e}") from e
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError on truncation
        raise ClipValidationError(uri, "<file>", f"not a valid npz: {type(e).__name__}: {e}") from e
    return ClipRecord.from_arrays(arrays, source=uri)


def write_clip(record: ClipRecord, uri: str, compress: bool = True) -> None:
    """Validate and write the record as a release npz to any fsspec URI, atomically."""
    record.validate()
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **record.to_arrays())
    fs.write_bytes(uri, buf.getvalue())
