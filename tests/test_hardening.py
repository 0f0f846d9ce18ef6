"""Hostile inputs and invocations (issue 10), each reproduced first: wrapping track lengths,
decompression bombs, special files, leftover temp files, rig matrices that are not rotations,
uint64 timestamps past 2^63. The job-level checks (a writer killed mid-write, then a resume;
concurrent runs into one output) are in tests/test_engine.py, on the real local Ray cluster."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, ClipValidationError, read_clip, write_clip
from s4d_ray.io.video import VideoError, probe_video
from tests.test_clip_io import make_record

NAME = "abcDEF-_123_66957"


# --- 2: track_lengths whose int64 sum wraps around ------------------------------------------


def wrapping_lengths(record: ClipRecord) -> np.ndarray:
    """Lengths whose int64 sum wraps around to the true total: 2^62 four times is 2^64 = 0."""
    lengths = record.track_lengths.copy()
    return np.concatenate([lengths, np.full(4, 1 << 62, np.int64)])


def test_wrapping_track_lengths_are_refused_before_any_allocation(tmp_path):
    record = make_record()
    lengths = wrapping_lengths(record)
    assert int(lengths.sum()) == int(record.track_lengths.sum())  # the wrap that used to pass
    arrays = record.to_arrays()
    arrays["track_lengths"] = lengths
    path = tmp_path / f"{NAME}.npz"
    np.savez(path, **arrays)
    with pytest.raises(ClipValidationError, match=r"track_lengths.*4611686018427387904.*\[0, 7\]"):
        read_clip(str(path))
    # a record changed after validation cannot reach np.repeat either
    record.track_lengths = lengths
    with pytest.raises(ClipValidationError, match="track_lengths"):
        record.dense_tracks()


def test_wrapping_lengths_through_eval_loader_do_not_crash_the_process(tmp_path):
    """What used to segfault (exit 139) in `np.repeat`: now a clean ClipValidationError."""
    record = make_record()
    arrays = record.to_arrays()
    arrays["track_lengths"] = wrapping_lengths(record)
    path = tmp_path / f"{NAME}.npz"
    np.savez(path, **arrays)
    code = (
        "import sys\nfrom s4d_ray.io.clip_io import ClipRecord, ClipValidationError\n"
        "import numpy as np\n"
        f"z = dict(np.load({str(path)!r}))\n"
        "z['name'], z['video_id'] = str(z['name']), str(z['video_id'])\n"
        "r = ClipRecord(**z)\n"
        "try:\n    r.dense_tracks()\nexcept ClipValidationError as e:\n"
        "    print('refused:', e); sys.exit(7)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 7, (done.returncode, done.stderr[-2000:])
    assert "track_lengths" in done.stdout


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([3, -1], r"length -1, outside \[0, 7\]"),
        ([3, 8], r"length 8, outside \[0, 7\]"),
        (np.array([3, 2**64 - 1], np.uint64), r"length 18446744073709551615"),
    ],
)
def test_each_track_length_is_checked(lengths, message):
    record = make_record()
    record.track_lengths = np.asarray(lengths)
    with pytest.raises(ClipValidationError, match=message):
        record.validate()


def test_indices_must_match_the_total_length():
    record = make_record()
    record.track_indices = record.track_indices[:-1]
    with pytest.raises(ClipValidationError, match=r"track_indices.*L = Σ lengths"):
        record.validate()


# --- 8: rig matrices that are not rotations; uint64 timestamps past 2^63 ---------------------


@pytest.mark.parametrize(
    "matrix",
    [
        np.array([[1, 0.2, 0], [0, 1, 0], [0, 0, 1]]),  # shear
        np.diag([-1.0, 1.0, 1.0]),  # mirror
        2 * np.eye(3),  # scale
    ],
)
def test_rectified2rig_must_be_rotations(matrix):
    record = make_record()
    record.rectified2rig = np.stack([np.eye(3), matrix]).astype(np.float32)
    with pytest.raises(ClipValidationError, match="rectified2rig.*not a rotation"):
        record.validate()


def test_a_real_rotation_passes():
    angle = 0.3
    rot = np.array(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    )
    record = make_record()
    record.rectified2rig = np.stack([rot, rot.T]).astype(np.float32)
    record.validate()


def test_uint64_timestamp_past_2_63_is_reported_as_itself():
    record = make_record()
    stamps = record.timestamps.astype(np.uint64)
    stamps[-1] = np.uint64(2**63 + 5)
    record.timestamps = stamps
    with pytest.raises(ClipValidationError, match="9223372036854775813 µs"):
        record.validate()


# --- 4: decompression bombs ------------------------------------------------------------------


def bomb_npz(path, record: ClipRecord, extra_bytes: int) -> None:
    """A release npz plus a zero-filled extra member of `extra_bytes`, deflated to ~1/1000."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **record.to_arrays())
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("padding.npy", "w", force_zip64=True) as member:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": "|u1", "fortran_order": False, "shape": (extra_bytes,)}
            )
            member.write(header.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(extra_bytes >> 20):
                member.write(chunk)
    path.write_bytes(buf.getvalue())


def peak_rss_of(code: str) -> tuple[int, str]:
    """Run `code` in a fresh interpreter; its peak RSS (bytes) and stdout."""
    wrapped = code + "\nimport resource; print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rss = int(done.stdout.rsplit("RSS", 1)[1]) * 1024
    return rss, done.stdout


def test_decompression_bomb_member_is_never_inflated(tmp_path):
    record = make_record()
    path = tmp_path / f"{NAME}.npz"
    bomb_npz(path, record, 512 << 20)  # 512 MiB of zeros in ~0.5 MB
    assert path.stat().st_size < 2 << 20
    # the engine's decode stage reads the release members only: the bomb costs nothing
    rss, out = peak_rss_of(
        f"from s4d_ray.io.clip_io import read_clip\nr = read_clip({str(path)!r}, extras=())\n"
        "print('TRACKS', r.num_tracks)"
    )
    assert "TRACKS 5" in out and rss < 400 << 20, rss
    # reading every member: refused from the zip headers, before decompression
    with pytest.raises(ClipValidationError, match=r"'padding'.*5368710\d\d\).*more than the limit"):
        read_clip(str(path), max_bytes=256 << 20)
    # a member whose array header claims more than the member holds
    arrays = record.to_arrays()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = bytearray(buf.getvalue())
    header_at = raw.find(b"'shape': (7,)")  # the timestamps header
    assert header_at > 0
    raw[header_at : header_at + 13] = b"'shape': (9,)"
    lying = tmp_path / f"{NAME}_lying.npz"
    lying.write_bytes(bytes(raw))
    with pytest.raises(ClipValidationError, match=r"timestamps.*header says \[9\]"):
        read_clip(str(lying))


def test_npz_file_size_is_capped(tmp_path):
    path = tmp_path / f"{NAME}.npz"
    write_clip(make_record(), str(path))
    with pytest.raises(ClipValidationError, match="more than the limit of 100"):
        read_clip(str(path), max_bytes=100)


# --- 3: special files as inputs --------------------------------------------------------------


def test_fifo_named_like_a_clip_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / f"{NAME}.npz"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(ClipValidationError, match="not a regular file.*FIFO"):
        read_clip(str(fifo))
    video = tmp_path / "abcDEF-_123.mp4"
    os.mkfifo(video)
    with pytest.raises(VideoError, match="FIFO"):
        probe_video(str(video), NAME)
    assert time.perf_counter() - start < 5


def test_symlink_to_a_device_is_refused_and_to_a_file_followed(tmp_path):
    to_zero = tmp_path / f"{NAME}.npz"
    to_zero.symlink_to("/dev/zero")
    with pytest.raises(ClipValidationError, match="character device"):
        read_clip(str(to_zero))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_clip(make_record(), str(elsewhere / f"{NAME}.npz"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / f"{NAME}.npz").symlink_to(elsewhere / f"{NAME}.npz")
    assert read_clip(str(inputs / f"{NAME}.npz")).num_tracks == 5  # documented: followed


# --- 1: temp files never look like outputs ---------------------------------------------------


def test_temp_files_are_hidden_and_never_end_in_the_output_suffix(tmp_path):
    target = tmp_path / "shard-0.parquet"
    seen = []
    with fs.open_atomic(str(target)) as f:
        f.write(b"x")
        seen = [p.name for p in tmp_path.iterdir()]
    assert len(seen) == 1 and seen[0].startswith(".tmp-") and seen[0].endswith(".partial")
    assert not seen[0].endswith(".parquet")
    # leftovers of killed writers (this version's and the old `.tmp-….parquet` ones) and
    # other hidden names are never listed, and are cleaned up
    (tmp_path / ".tmp-abc123shard-1.parquet").write_bytes(b"")
    (tmp_path / ".tmp-0123-shard-2.parquet.partial").write_bytes(b"PAR1")
    (tmp_path / "._shard-3.parquet").write_bytes(b"")
    assert [os.path.basename(u) for u in fs.list_files(str(tmp_path), ".parquet")] == [
        "shard-0.parquet"
    ]
    removed = fs.remove_stale_temp_files(str(tmp_path))
    assert sorted(os.path.basename(u) for u in removed) == [
        ".tmp-0123-shard-2.parquet.partial",
        ".tmp-abc123shard-1.parquet",
    ]
