"""Stereo4D release npz I/O: round trips on local, memory:// and gs://, validation, safety."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from s4d_ray.io import fs
from s4d_ray.io.clip_io import (
    ClipRecord,
    ClipValidationError,
    clip_id_from_uri,
    read_clip,
    write_clip,
)
from s4d_ray.io.ids import UnsafeIdError, make_clip_id, validate_clip_id


def make_record(num_tracks: int = 5, num_frames: int = 7, seed: int = 0) -> ClipRecord:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(num_tracks, num_frames, 3)).astype(np.float32)
    mask = rng.random((num_tracks, num_frames)) > 0.3
    c2w = np.tile(np.eye(3, 4, dtype=np.float32), (num_frames, 1, 1))
    c2w[:, :, 3] = rng.normal(size=(num_frames, 3))
    return ClipRecord(
        name="abcDEF-_123_66957",
        video_id="abcDEF-_123",
        timestamps=66957 + 33367 * np.arange(num_frames, dtype=np.int64),
        camera2world=c2w,
        rectified2rig=np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)),
        fov_bounds=np.array([-90, 90, -90, 90], np.float32),
        **ClipRecord.sparse_from_dense(dense, mask),
    )


def release_loader(raw: bytes) -> dict:
    """The Stereo4D release loader logic (dense NaN tracks, inverted extrinsics), written independently of ours."""
    with np.load(io.BytesIO(raw)) as z:
        data = {k: z[k] for k in z.files}
    lengths = data["track_lengths"]
    tracks = np.full((len(lengths), len(data["timestamps"]), 3), np.nan)
    tracks[np.repeat(np.arange(lengths.shape[0]), lengths), data["track_indices"], :] = data[
        "track_coordinates"
    ]
    rot = np.transpose(data["camera2world"][:, :, :3], (0, 2, 1))
    data["extrs_rectified"] = np.concatenate(
        [rot, -np.matmul(rot, data["camera2world"][:, :, 3:])], axis=-1
    )
    data["track3d"] = tracks
    return data


@pytest.mark.parametrize("root", ["local", "memory"])
def test_round_trip_and_release_loader(tmp_path, root):
    record = make_record()
    base = str(tmp_path) if root == "local" else "memory://clips"
    uri = fs.join(base, f"{record.name}.npz")
    write_clip(record, uri)
    back = read_clip(uri)
    assert back.name == record.name and back.video_id == record.video_id
    np.testing.assert_array_equal(back.timestamps, record.timestamps)
    np.testing.assert_array_equal(back.dense_tracks(), record.dense_tracks())
    released = release_loader(fs.read_bytes(uri))
    np.testing.assert_array_equal(released["track3d"], record.dense_tracks())
    np.testing.assert_allclose(released["extrs_rectified"], record.world2camera(), atol=1e-6)
    assert clip_id_from_uri(uri) == record.name


def test_round_trip_on_gcs_emulator(gcs_bucket):
    record = make_record(seed=3)
    record.extras["visibility"] = np.ones((record.num_tracks, record.num_frames), bool)
    uri = f"{gcs_bucket}/train/{record.name}.npz"
    write_clip(record, uri)
    assert fs.list_files(f"{gcs_bucket}/train", ".npz") == [uri]
    back = read_clip(uri)
    np.testing.assert_array_equal(back.dense_tracks(), record.dense_tracks())
    np.testing.assert_array_equal(back.extras["visibility"], record.extras["visibility"])


def test_dense_tracks_nan_outside_mask():
    record = make_record()
    dense = record.dense_tracks()
    assert np.isnan(dense).any() and np.isfinite(dense).any()
    assert int(np.isfinite(dense[..., 0]).sum()) == int(record.track_lengths.sum())


def test_missing_field_names_clip_and_field(tmp_path):
    arrays = make_record().to_arrays()
    del arrays["rectified2rig"]
    path = tmp_path / "abcDEF-_123_66957.npz"
    np.savez(path, **arrays)
    with pytest.raises(ClipValidationError, match="abcDEF-_123_66957.*rectified2rig.*missing"):
        read_clip(str(path))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("camera2world", np.zeros((3, 3, 4), np.float32), r"shape \[7,3,4\]"),
        ("track_coordinates", None, "NaN"),
        ("timestamps", np.arange(7, dtype=np.int64)[::-1].copy(), "increasing"),
        ("fov_bounds", np.array([90, -90, -90, 90], np.float32), "start < end"),
    ],
)
def test_bad_fields_are_named(field, value, message):
    record = make_record()
    if value is None:
        value = record.track_coordinates.copy()
        value[0, 0] = np.nan
    setattr(record, field, value)
    with pytest.raises(ClipValidationError, match=rf"abcDEF-_123_66957.*{field}.*{message}"):
        record.validate()


def test_pickled_npz_is_refused(tmp_path):
    arrays = make_record().to_arrays()
    arrays["timestamps"] = np.array([object()], dtype=object)
    path = tmp_path / "abcDEF-_123_66957.npz"
    np.savez(path, **arrays)
    with pytest.raises(ClipValidationError, match="pickle"):
        read_clip(str(path))


def test_truncated_npz_is_a_clear_error(tmp_path):
    path = tmp_path / "abcDEF-_123_66957.npz"
    write_clip(make_record(), str(path))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ClipValidationError, match="not a valid npz"):
        read_clip(str(path))
    assert not zipfile.is_zipfile(path)


@pytest.mark.parametrize(
    "bad", ["../x", "../x_123", "a/b_1", "x_", "_123", "abc", "a b_1", "x_1.npz"]
)
def test_unsafe_clip_ids_are_rejected(bad):
    with pytest.raises(UnsafeIdError):
        validate_clip_id(bad)


def test_clip_id_from_uri_validates_the_file_name():
    assert (
        clip_id_from_uri("gs://stereo4d/train/CMwZrkhQ0ck_130030030.npz") == "CMwZrkhQ0ck_130030030"
    )
    with pytest.raises(UnsafeIdError):
        clip_id_from_uri("/data/not a clip.npz")


def test_make_clip_id():
    assert make_clip_id("CMwZrkhQ0ck", 130030030) == "CMwZrkhQ0ck_130030030"
    with pytest.raises(UnsafeIdError):
        make_clip_id("../etc", 1)


def test_unsafe_name_inside_npz_is_rejected():
    record = make_record()
    record.name = "../../etc_1"
    with pytest.raises(ClipValidationError, match="name"):
        record.validate()
