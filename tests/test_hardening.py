"""Hostile inputs and invocations, each reproduced first: wrapping track lengths,
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
    with (
        zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("padding.npy", "w", force_zip64=True) as member,
    ):
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
    """Run `code` in a fresh interpreter; its peak RSS (bytes) and stdout. VmHWM, not
    getrusage: Linux carries `ru_maxrss` across exec, so a child of a large pytest process
    would report the parent's size."""
    wrapped = (
        code + "\nimport re; status = open('/proc/self/status').read()\n"
        "print('RSS', re.search(r'VmHWM:\\s+(\\d+)', status).group(1))"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rss = int(done.stdout.rsplit("RSS", 1)[1]) * 1024
    return rss, done.stdout


def test_decompression_bomb_member_is_never_inflated(tmp_path):
    record = make_record()
    path = tmp_path / f"{NAME}.npz"
    bomb_npz(path, record, 256 << 20)  # 256 MiB of zeros in ~0.25 MB
    assert path.stat().st_size < 2 << 20
    # the engine's decode stage reads the release members only: the bomb costs nothing
    rss, out = peak_rss_of(
        f"from s4d_ray.io.clip_io import read_clip\nr = read_clip({str(path)!r}, extras=())\n"
        "print('TRACKS', r.num_tracks)"
    )
    assert "TRACKS 5" in out and rss < 160 << 20, rss  # imports ~40 MB; inflated: > 290 MB
    # reading every member: refused from the zip headers, before decompression
    with pytest.raises(ClipValidationError, match=r"'padding'.*2684355\d\d\).*more than the limit"):
        read_clip(str(path), max_bytes=128 << 20)
    # a member whose array header claims far more than the member holds (valid CRC)
    arrays = record.to_arrays()
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if k != "timestamps"})
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)}
    )
    with zipfile.ZipFile(buf, "a") as archive:
        archive.writestr("timestamps.npy", header.getvalue() + arrays["timestamps"].tobytes())
    lying = tmp_path / f"{NAME}_lying.npz"
    lying.write_bytes(buf.getvalue())
    with pytest.raises(ClipValidationError, match=r"timestamps.*header says \[1000000000000\]"):
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


def test_temp_files_are_never_listed_and_never_end_in_the_output_suffix(tmp_path):
    target = tmp_path / "shard-0.parquet"
    seen = []
    with fs.open_atomic(str(target)) as f:
        f.write(b"x")
        seen = [p.name for p in tmp_path.iterdir()]
    assert len(seen) == 1 and seen[0].startswith(".tmp-") and seen[0].endswith(".partial")
    assert not seen[0].endswith(".parquet")
    # leftovers of killed writers (this version's and the old `.tmp-….parquet` ones) and the
    # lease are never listed; temp files are cleaned up. Other names are listed as before.
    (tmp_path / ".tmp-abc123shard-1.parquet").write_bytes(b"")
    (tmp_path / ".tmp-0123-shard-2.parquet.partial").write_bytes(b"PAR1")
    (tmp_path / ".s4d-lease.json").write_bytes(b"{}")
    (tmp_path / "._shard-3.parquet").write_bytes(b"")
    (tmp_path / f".tmp-k1ll3d{NAME}.npz").write_bytes(b"")  # eval-dynadust3r counted these
    assert fs.list_files(str(tmp_path), ".npz") == []
    assert [os.path.basename(u) for u in fs.list_files(str(tmp_path))] == [
        "._shard-3.parquet",
        "shard-0.parquet",
    ]
    removed = fs.remove_stale_temp_files(str(tmp_path))
    assert sorted(os.path.basename(u) for u in removed) == [
        ".tmp-0123-shard-2.parquet.partial",
        ".tmp-abc123shard-1.parquet",
        f".tmp-k1ll3d{NAME}.npz",
    ]


# --- 6: one run per output folder ------------------------------------------------------------


def test_second_run_into_one_output_is_refused_until_the_first_ends(tmp_path):
    from s4d_ray.io.lease import LEASE_NAME, OutputBusyError, OutputLease

    first = OutputLease.acquire(str(tmp_path), heartbeat_s=0.2)
    with pytest.raises(OutputBusyError, match=rf"in use by another run.*pid {os.getpid()}"):
        OutputLease.acquire(str(tmp_path))
    renewed = (tmp_path / LEASE_NAME).read_text()
    time.sleep(0.6)
    assert (tmp_path / LEASE_NAME).read_text() != renewed  # the heartbeat renews it
    first.release()
    assert not (tmp_path / LEASE_NAME).exists()
    with OutputLease.acquire(str(tmp_path)):
        assert fs.list_files(str(tmp_path)) == []  # the lease is in no listing


def test_lease_of_a_killed_run_is_taken_over(tmp_path):
    from s4d_ray.io.lease import LEASE_NAME, OutputBusyError, OutputLease

    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time\nfrom s4d_ray.io.lease import OutputLease\n"
            f"OutputLease.acquire({str(tmp_path)!r})\nprint('held', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputBusyError):
        OutputLease.acquire(str(tmp_path))
    holder.kill()
    holder.wait(10)
    assert (tmp_path / LEASE_NAME).exists()  # SIGKILL: nothing cleaned up
    OutputLease.acquire(str(tmp_path)).release()  # dead holder on this host: taken at once
    # a lease renewed long ago by a process on another host is stale by age
    (tmp_path / LEASE_NAME).write_text(
        '{"token": "t", "host": "elsewhere", "pid": 1, "renewed": 0, "stale_after_s": 120}'
    )
    OutputLease.acquire(str(tmp_path)).release()


def test_lease_on_gcs_is_exclusive(gcs_bucket):
    from s4d_ray.io.lease import OutputBusyError, OutputLease

    lease = OutputLease.acquire(f"{gcs_bucket}/out")
    with pytest.raises(OutputBusyError):
        OutputLease.acquire(f"{gcs_bucket}/out")
    lease.release()
    OutputLease.acquire(f"{gcs_bucket}/out").release()


# --- 5 and lower: output paths checked up front ----------------------------------------------


@pytest.mark.parametrize(
    ("output", "inputs"),
    [
        ("{d}", {"--npz": "{d}/npz"}),  # the dataset root: OUTPUT/npz is the input folder
        ("{d}/npz", {"--npz": "{d}/npz"}),
        ("{d}/npz/out", {"--npz": "{d}/npz"}),
        ("{d}/out", {"--npz": "{d}/npz/*.npz", "--videos": "{d}/out/raw"}),
        ("{d}/link", {"--npz": "{d}/npz"}),  # a symlink to the input folder
        ("memory://b/data", {"--npz": "memory://b/data/npz"}),
    ],
)
def test_output_overlapping_an_input_is_refused(tmp_path, output, inputs):
    from s4d_ray.engine.preflight import OutputPathError, check_paths

    (tmp_path / "npz").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "npz")
    subst = {k: v.format(d=tmp_path) for k, v in inputs.items()}
    with pytest.raises(OutputPathError, match="overlaps"):
        check_paths(output.format(d=tmp_path), subst)


def test_separate_output_is_accepted(tmp_path):
    from s4d_ray.engine.preflight import check_paths

    check_paths(str(tmp_path / "out"), {"--npz": str(tmp_path / "npz"), "--videos": ""})
    check_paths(str(tmp_path / "npz2"), {"--npz": str(tmp_path / "npz")})  # a prefix, not a parent
    check_paths("gs://b/out", {"--npz": str(tmp_path / "out")})


def test_unusable_output_is_found_before_any_clip(tmp_path):
    from s4d_ray.engine.preflight import OutputPathError, prepare_output

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputPathError, match="exists and is not a folder"):
        prepare_output(str(tmp_path / "a_file"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "parquet").write_text("x")  # a file where a folder must go
    with pytest.raises(OutputPathError, match="parquet exists and is not a folder"):
        prepare_output(str(tmp_path / "out"))
    with pytest.raises(OutputPathError, match="not writable"):  # even for root
        prepare_output("/proc/s4d-hardening-out")
    prepare_output(str(tmp_path / "fine"))
    assert sorted(p.name for p in (tmp_path / "fine").iterdir()) == ["failures", "npz", "parquet"]


# --- lower: one-line CLI errors, a dead --address, unbounded sizes -----------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("synth --out X --frames 0", "--frames: must be in [1, 10000], got 0"),
        ("synth --out X --height 7", "--height: must be in [16, 4096], got 7"),
        ("synth --out X --height 17", "--height: must be a multiple of 2, got 17"),
        ("synth --out X --tracks 0", "--tracks: must be in [1, 1000000], got 0"),
        ("rectify --vid a_1 --output_hfov nan", "--output_hfov: must be a finite number"),
        ("rectify --vid a_1 --output_hfov 180", "--output_hfov: must be in (0, 180)"),
        ("predict --checkpoint c --video v --out o --time nan", "--time: must be a finite"),
        ("predict --checkpoint c --video v --out o --time 2", "--time: must be in [0, 1]"),
        ("predict --checkpoint c --video v --out o --size 100000", "--size: must be in [16, 1024]"),
        ("run --npz a --videos b --output c --limit 0", "--limit: must be in [1, inf], got 0"),
        ("eval-dynadust3r --checkpoint c --npz n --limit 0", "--limit: must be in [1, inf]"),
    ],
)
def test_bad_cli_values_are_one_line_errors(argv, message, capsys):
    from s4d_ray.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv.split())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_dead_address_fails_fast_naming_it():
    import socket

    from s4d_ray.engine.command import check_reachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
            check_reachable(address)
    assert time.perf_counter() - start < 5


def test_checkpoint_describing_a_huge_encoder_is_refused_at_once(tmp_path):
    import argparse

    import torch

    from s4d_ray.models.dynadust3r import load_dust3r
    from s4d_ray.models.weights import CheckpointError

    args = argparse.Namespace(
        model="AsymmetricCroCo3DStereo(pos_embed='RoPE100', img_size=(512, 512), "
        "head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), "
        "conf_mode=('exp', 1, inf), enc_embed_dim=1024, enc_depth=10000, enc_num_heads=16, "
        "dec_embed_dim=768, dec_depth=12, dec_num_heads=12)"
    )
    path = tmp_path / "huge.pth"
    torch.save({"args": args, "model": {"x": torch.zeros(1)}}, path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"enc_depth must be an integer in \[1, 128\]"):
        load_dust3r(str(path))
    assert time.perf_counter() - start < 5


def test_rectify_refuses_a_nan_field_of_view(tmp_path):
    from s4d_ray.io.rectify import rectify_to_files

    with pytest.raises(ValueError, match=r"output_hfov must be in \(0, 180\)"):
        rectify_to_files(NAME, str(tmp_path), str(tmp_path), str(tmp_path), float("nan"))


def test_predict_size_is_bounded_before_loading(tmp_path):
    from s4d_ray.dynadust3r.inference import predict_to_files

    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"input size must be in \[16, 1024\]"):
        predict_to_files(str(tmp_path / "missing.pth"), image, image, 0.5, str(tmp_path), 100_000)


def test_yaml_alias_bomb_and_huge_configs_are_refused_at_once(tmp_path):
    from s4d_ray.engine.config import ConfigError, load_config

    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        rows.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(rows) + "\n")  # ~300 bytes, 9^8 = 43 million leaves
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases"):
        load_config(str(bomb))
    assert time.perf_counter() - start < 2
    huge = tmp_path / "huge.yaml"
    huge.write_text("min_tracks: 16\n" + "#" * (2 << 20))
    with pytest.raises(ConfigError, match="more than the limit"):
        load_config(str(huge))
    plain = tmp_path / "plain.yaml"
    plain.write_text("min_tracks: 4\nmax_npz_bytes: 1000000\n")
    config = load_config(str(plain))
    assert (config.min_tracks, config.max_npz_bytes) == (4, 1_000_000)


def test_a_bad_parquet_file_is_named_in_the_error(tmp_path):
    from s4d_ray.io.writer import read_failures

    (tmp_path / "failures-0.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"failures-0\.parquet: not a readable Parquet file"):
        read_failures(str(tmp_path))
