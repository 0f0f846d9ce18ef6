"""Writer: release npz + extras, Parquet shards, failures; round trips on memory:// and local."""

import io
import json
import uuid

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, read_clip
from s4d_ray.io.writer import (
    FIELD_SHAPES,
    ClipFailure,
    build_clip_record,
    read_failures,
    read_parquet_clips,
    release_clip_ids,
    shard_name,
    write_clip_npz,
    write_failures,
    write_parquet_shard,
    write_records,
)


def load_release_npz(data: bytes) -> dict:
    """The release loader's logic (Stereo4D `utils.load_dataset_npz`), on bytes."""
    with np.load(io.BytesIO(data)) as data_zip:
        data = {k: data_zip[k] for k in data_zip}
    data["meta_fov"] = {
        "start_yaw_in_degrees": data["fov_bounds"][0],
        "end_yaw_in_degrees": data["fov_bounds"][1],
        "start_tilt_in_degrees": data["fov_bounds"][2],
        "end_tilt_in_degrees": data["fov_bounds"][3],
    }
    data.pop("fov_bounds")
    c2w = data["camera2world"]
    rot_inv = np.transpose(c2w[:, :, :3], (0, 2, 1))
    data["extrs_rectified"] = np.concatenate([rot_inv, -np.matmul(rot_inv, c2w[:, :, 3:])], -1)
    data.pop("camera2world")
    lengths = data["track_lengths"]
    tracks = np.full((len(lengths), len(data["timestamps"]), 3), np.nan)
    tracks[np.repeat(np.arange(lengths.shape[0]), lengths), data["track_indices"], :] = data[
        "track_coordinates"
    ]
    data["track3d"] = tracks
    for key in ("track_lengths", "track_indices", "track_coordinates"):
        data.pop(key)
    return data


def random_pose(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    return np.concatenate([q, rng.normal(size=(3, 1))], axis=1)


def make_inputs(clip_id: str, num_tracks: int = 7, num_frames: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = rng.uniform(size=(num_tracks, num_frames)) > 0.3
    mask[0] = False  # a track with no stored frame
    return {
        "name": clip_id,
        "video_id": clip_id.rsplit("_", 1)[0],
        "timestamps": 1_000_000 + 33_367 * np.arange(num_frames),
        "camera2world": np.stack([random_pose(rng) for _ in range(num_frames)]),
        "rectified2rig": np.stack([random_pose(rng)[:, :3] for _ in range(2)]),
        "fov_bounds": np.array([-90.0, 90.0, -90.0, 90.0]),
        "tracks": rng.normal(size=(num_tracks, num_frames, 3)) * 3,
        "track_mask": mask,
        "visibility": rng.uniform(size=(num_tracks, num_frames)) > 0.5,
        "colours": rng.integers(0, 256, (num_tracks, 3)),
        "motion": rng.uniform(0, 40, (num_tracks, num_frames)),
        "stage_timings": {"decode": 1.5, "stereo": 2.25, "tracking": 10.0},
        "metadata": {"stereo": "sea-raft-spring-M", "tracker": "bootstapir-v2", "backend": "cpu"},
    }


@pytest.fixture(params=["memory", "local"])
def output_root(request, tmp_path):
    if request.param == "memory":
        root = f"memory://s4d-writer-{uuid.uuid4().hex}/out"
        yield root
        filesystem, path = fs.filesystem(root)
        bucket = path.rsplit("/", 1)[0]
        if filesystem.exists(bucket):
            filesystem.rm(bucket, recursive=True)
    else:
        yield str(tmp_path / "out")


def assert_same_record(a: ClipRecord, b: ClipRecord) -> None:
    arrays_a, arrays_b = a.to_arrays(), b.to_arrays()
    assert sorted(arrays_a) == sorted(arrays_b)
    for key, value in arrays_a.items():
        assert value.dtype == arrays_b[key].dtype, key
        np.testing.assert_array_equal(value, arrays_b[key], err_msg=key)


def test_build_record_stores_masked_frames_and_extras():
    inputs = make_inputs("vidA_1000000")
    record = build_clip_record(**inputs)
    assert record.track_lengths.tolist() == inputs["track_mask"].sum(1).tolist()
    dense = record.dense_tracks()
    mask = inputs["track_mask"]
    np.testing.assert_allclose(dense[mask], inputs["tracks"][mask], rtol=1e-6)
    assert np.isnan(dense[~mask]).all()
    assert record.extras["visibility"].dtype == np.bool_
    assert record.extras["colours"].dtype == np.uint8
    assert record.extras["motion"].dtype == np.float16
    np.testing.assert_allclose(record.extras["motion"], inputs["motion"], atol=0.02)
    assert json.loads(str(record.extras["stage_timings"])) == inputs["stage_timings"]
    assert json.loads(str(record.extras["metadata"])) == inputs["metadata"]
    assert record.extras["metadata"].ndim == 0 and record.extras["metadata"].dtype.kind == "U"


def test_build_record_rejects_bad_shapes():
    inputs = make_inputs("vidA_1000000")
    inputs["motion"] = inputs["motion"][:, :-1]
    with pytest.raises(ValueError, match="motion"):
        build_clip_record(**inputs)


def test_build_record_rejects_float_colours():
    inputs = make_inputs("vidA_1000000")
    inputs["colours"] = inputs["colours"] / 255.0
    with pytest.raises(ValueError, match="colours"):
        build_clip_record(**inputs)


def test_npz_loads_with_release_loader(output_root):
    inputs = make_inputs("vid-B_2000000")
    record = build_clip_record(**inputs)
    uri = write_clip_npz(record, output_root)
    assert uri == fs.join(output_root, "npz", "vid-B_2000000.npz")
    data = load_release_npz(fs.read_bytes(uri))
    mask = inputs["track_mask"]
    np.testing.assert_allclose(data["track3d"][mask], inputs["tracks"][mask], rtol=1e-6)
    assert np.isnan(data["track3d"][~mask]).all()
    c2w = inputs["camera2world"]
    bottom = np.broadcast_to([0.0, 0.0, 0.0, 1.0], (len(c2w), 1, 4))
    expected_w2c = np.linalg.inv(np.concatenate([c2w, bottom], axis=1))[:, :3]
    np.testing.assert_allclose(data["extrs_rectified"], expected_w2c, atol=1e-9)
    assert str(data["name"]) == "vid-B_2000000" and str(data["video_id"]) == "vid-B"
    assert data["meta_fov"]["end_yaw_in_degrees"] == 90.0
    np.testing.assert_array_equal(data["visibility"], inputs["visibility"])
    assert json.loads(str(data["stage_timings"]))["tracking"] == 10.0
    assert_same_record(read_clip(uri), record)


def test_parquet_round_trip_with_pyarrow_and_pandas(output_root):
    records = [
        build_clip_record(**make_inputs(f"vid{i}_{i}000", 4 + i, 3 + i, i)) for i in (2, 0, 1)
    ]
    uri = write_parquet_shard(records, output_root)
    assert uri == fs.join(output_root, "parquet", shard_name(r.name for r in records) + ".parquet")

    back = read_parquet_clips(uri)
    assert [r.name for r in back] == ["vid0_0000", "vid1_1000", "vid2_2000"]
    for got in back:
        assert_same_record(got, next(r for r in records if r.name == got.name))
    assert [r.name for r in read_parquet_clips(fs.join(output_root, "parquet"))] == [
        r.name for r in back
    ]

    filesystem, path = fs.filesystem(uri)
    with filesystem.open(path, "rb") as f:
        table = pq.read_table(f)
    assert table.num_rows == 3
    assert json.loads(table.schema.metadata[b"s4d_ray.field_shapes"]) == FIELD_SHAPES
    row = table.slice(1, 1).to_pylist()[0]
    assert row["name"] == "vid1_1000"
    assert np.asarray(row["camera2world"]).reshape(-1, 3, 4).shape == (4, 3, 4)
    with filesystem.open(path, "rb") as f:
        frame = pd.read_parquet(f)
    assert frame["name"].tolist() == ["vid0_0000", "vid1_1000", "vid2_2000"]
    visibility = np.asarray(frame.loc[2, "visibility"]).reshape(6, 5)
    np.testing.assert_array_equal(visibility, records[0].extras["visibility"])
    assert json.loads(frame.loc[0, "metadata"])["backend"] == "cpu"


def test_rewrite_overwrites_instead_of_duplicating(output_root):
    records = [build_clip_record(**make_inputs(f"vid{i}_{i}", seed=i)) for i in range(2)]
    first = write_parquet_shard(records, output_root)
    second = write_parquet_shard(records[::-1], output_root)
    npz_first = write_clip_npz(records[0], output_root)
    changed = build_clip_record(**{**make_inputs("vid0_0", seed=9)})
    npz_second = write_clip_npz(changed, output_root)
    assert first == second and npz_first == npz_second
    assert len(fs.list_files(fs.join(output_root, "parquet"), ".parquet")) == 1
    assert len(read_parquet_clips(fs.join(output_root, "parquet"))) == 2
    npz_files = fs.list_files(fs.join(output_root, "npz"))
    assert [uri.rsplit("/", 1)[-1] for uri in npz_files] == ["vid0_0.npz"]
    assert_same_record(read_clip(npz_first), changed)
    if fs.is_local(output_root):
        written = fs.list_files(fs.join(output_root, "parquet")) + npz_files
        assert not [uri for uri in written if ".tmp-" in uri]


def test_shard_name_is_deterministic_and_order_free():
    assert shard_name(["b_1", "a_2"]) == shard_name(["a_2", "b_1", "a_2"])
    assert shard_name(["a_2"]) != shard_name(["a_2", "b_1"])
    assert shard_name(["a_2"]).startswith("shard-")


def test_shard_rejects_duplicate_clip_ids(output_root):
    record = build_clip_record(**make_inputs("vid0_0"))
    with pytest.raises(ValueError, match="duplicate"):
        write_parquet_shard([record, record], output_root)


def test_failures_table_round_trip(output_root):
    oom = ClipFailure("vid0_0", "stereo", "RuntimeError", "SEA-RAFT ran out of memory")
    failures = [oom, ClipFailure("vid1_1", "decode", "ValueError", "no frame at 123 us")]
    uri = write_failures(failures, output_root)
    assert uri.startswith(fs.join(output_root, "failures", "failures-"))
    assert write_failures(failures[::-1], output_root) == uri
    back = read_failures(fs.join(output_root, "failures"))
    assert back == sorted(failures, key=lambda f: f.clip_id)
    assert back[0].error_type == "RuntimeError" and "out of memory" in back[0].message
    assert write_failures([], output_root) is None
    filesystem, path = fs.filesystem(uri)
    with filesystem.open(path, "rb") as f:
        assert pd.read_parquet(f).columns.tolist() == ["clip_id", "stage", "error_type", "message"]


def test_write_records_names_the_shard_by_the_clips_written(output_root):
    """The release format's write: an npz per clip, one shard of the clips written (named by
    their ids, so writing the batch again overwrites); a clip whose npz cannot be written is
    returned as an error and left out of the shard."""
    records = [build_clip_record(**make_inputs(f"vid{i}_{i}", seed=i)) for i in range(3)]
    records[2].timestamps = records[2].timestamps[:-1]  # no longer a valid record
    errors = write_records(records, output_root)
    assert list(errors) == ["vid2_2"]
    assert write_records(records, output_root).keys() == errors.keys()
    shards = fs.list_files(fs.join(output_root, "parquet"), ".parquet")
    assert [uri.rsplit("/", 1)[-1] for uri in shards] == [
        f"{shard_name(['vid0_0', 'vid1_1'])}.parquet"
    ]
    assert [r.name for r in read_parquet_clips(shards[0])] == ["vid0_0", "vid1_1"]
    assert sorted(fs.list_files(fs.join(output_root, "npz"), ".npz"))[-1].endswith("vid1_1.npz")
    assert release_clip_ids(output_root) == {"vid0_0", "vid1_1"}


@pytest.mark.slow
def test_shards_read_with_ray_data(tmp_path):
    import ray

    records = [build_clip_record(**make_inputs(f"vid{i}_{i}", seed=i)) for i in range(3)]
    write_parquet_shard(records[:2], str(tmp_path))
    write_parquet_shard(records[2:], str(tmp_path))
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = ray.data.read_parquet(str(tmp_path / "parquet")).take_all()
    finally:
        if started_here:
            ray.shutdown()
    assert sorted(row["name"] for row in rows) == ["vid0_0", "vid1_1", "vid2_2"]
    row = next(r for r in rows if r["name"] == "vid1_1")
    shapes = json.loads(row["array_shapes"])
    motion = np.asarray(row["motion"]).reshape(shapes["motion"])
    np.testing.assert_array_equal(motion, records[1].extras["motion"])
    coords = np.asarray(row["track_coordinates"]).reshape(-1, 3)
    np.testing.assert_array_equal(coords, records[1].track_coordinates)
