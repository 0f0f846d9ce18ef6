"""Hostile model, dense-output and pointmap inputs (hardening issue), each reproduced first:
bombs whose headers declare far more than their bytes (dense depth/video, torch zip storages,
DeepLab Consts and tar members, GNU-sparse tar members), hostile model configs, corrupt
samples, and static cameras in the evaluators. Every bad input is a one-line InputError naming
the file, a failure row for that one clip/sample, or a refusal before any allocation; the
memory of the largest bombs is measured in one slow test (VmHWM of a fresh interpreter)."""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from s4d_ray.errors import InputError, ResourceLimitError, StageError
from s4d_ray.geometry.camera import intrinsics
from s4d_ray.geometry.pose_metrics import ate_se3, ate_sim3, pose_report, rpe
from s4d_ray.io.dense import (
    DenseOutputError,
    camera_json,
    decode_depth,
    encode_depth,
    encode_frames,
    read_dense,
)
from s4d_ray.models.weights import CheckpointError, load_torch_checkpoint
from s4d_ray.pointmaps.reader import SampleError, decode_sample, iter_raw_samples, load_npy
from tests.test_hardening import peak_rss_of

CLIP = "abcDEF-_123_66957"

# --- builders of hostile files (headers that declare more than the bytes hold) --------------

CHUNK = 16 << 20
_ZEROS = bytes(CHUNK)


def _fresh_deflate(data: bytes, final: bool = False) -> bytes:
    """Raw deflate of `data` from a fresh compressor: byte-aligned, no back-references, so
    pieces can be concatenated (only the last `final`)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


_ZERO_BLOCK: list[bytes] = []


def deflate_parts(parts: list[bytes | int]) -> tuple[bytes, int, int]:
    """(raw deflate stream, crc32, size) of the concatenation of `parts` (bytes, or an int
    for that many zero bytes): 1 GB of zeros costs ~1 MB and one crc pass, not a compression."""
    if not _ZERO_BLOCK:
        _ZERO_BLOCK.append(_fresh_deflate(_ZEROS))
    out, crc, size = [], 0, 0
    for part in parts:
        if isinstance(part, int):
            full, rest = divmod(part, CHUNK)
            out.append(_ZERO_BLOCK[0] * full)
            for _ in range(full):
                crc = zlib.crc32(_ZEROS, crc)
            tail = bytes(rest)
            out.append(_fresh_deflate(tail))
            crc = zlib.crc32(tail, crc)
            size += part
        else:
            out.append(_fresh_deflate(part))
            crc = zlib.crc32(part, crc)
            size += len(part)
    out.append(_fresh_deflate(b"", final=True))
    return b"".join(out), crc, size


def write_zip(path: Path, members: list[tuple[str, list[bytes | int], bool]]) -> None:
    """A zip of (name, parts, deflated) members, written by hand so a deflated member can be
    a 1 GB run of zeros (sizes < 4 GiB: no zip64)."""
    body, central = io.BytesIO(), []
    for name, parts, deflated in members:
        encoded = name.encode()
        if deflated:
            data, crc, size = deflate_parts(parts)
        else:
            data = b"".join(bytes(p) if isinstance(p, int) else p for p in parts)
            crc, size = zlib.crc32(data), len(data)
        method = 8 if deflated else 0
        offset = body.tell()
        body.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size, len(encoded), 0))  # fmt: skip
        body.write(encoded + data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data), size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded)  # fmt: skip
    start = body.tell()
    directory = b"".join(central)
    body.write(directory)
    body.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(directory), start, 0))  # fmt: skip
    path.write_bytes(body.getvalue())


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def npz_bomb(path: Path, member: str, shape: tuple[int, ...], dtype: str) -> None:
    """An npz whose one member is a consistent all-zero array of `shape`, deflated."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    write_zip(path, [(f"{member}.npy", [npy_header(shape, dtype), nbytes], True)])


def torch_storage_bomb(path: Path, storage_bytes: int) -> None:
    """An official-format TracksTo4D .pt whose one storage is `storage_bytes` of zeros,
    deflated: the pickle (patched from a real torch.save) asks torch for all of it."""
    seed_numel = 123457  # an int32-sized numel, so the patched one has the same pickle opcode
    buffer = io.BytesIO()
    torch.save({"epoch": 0, "model_state_dict": {"w": torch.zeros(seed_numel)}, "optimizer_state_dict": {}, "loss": 0.0}, buffer)  # fmt: skip
    members = []
    with zipfile.ZipFile(buffer) as template:
        for info in template.infolist():
            data = template.read(info)
            if info.filename.endswith("data.pkl"):
                old = b"J" + struct.pack("<i", seed_numel)
                assert data.count(old) == 2  # the storage's numel and the tensor's size
                data = data.replace(old, b"J" + struct.pack("<i", storage_bytes // 4))
            if info.filename.endswith("/data/0"):
                members.append((info.filename, [storage_bytes], True))
            else:
                members.append((info.filename, [data], False))
    write_zip(path, members)


def gnu_sparse_tar(members: list[tuple[str, bytes | int]]) -> bytes:
    """A tar of (name, bytes) regular members and (name, size) GNU-sparse members: `size`
    bytes of holes with 512 real bytes at the end, in ~1.5 kB of tar."""
    out = io.BytesIO()
    for name, content in members:
        if isinstance(content, bytes):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            out.write(info.tobuf(format=tarfile.GNU_FORMAT))
            out.write(content + bytes(-len(content) % 512))
            continue
        info = tarfile.TarInfo(name)
        info.size = 512  # the bytes stored
        header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
        header[156:157] = tarfile.GNUTYPE_SPARSE
        header[386:398] = tarfile.itn(content - 512, 12, tarfile.GNU_FORMAT)  # data at the end
        header[398:410] = tarfile.itn(512, 12, tarfile.GNU_FORMAT)
        header[482] = 0  # no extended sparse headers
        header[483:495] = tarfile.itn(content, 12, tarfile.GNU_FORMAT)  # the real size
        header[148:156] = b" " * 8
        header[148:155] = b"%06o\0" % sum(header[:512])
        out.write(bytes(header[:512]) + b"\x01" * 512)
    out.write(bytes(1024))
    return out.getvalue()


def deeplab_const_bomb(path: Path, values: int = 250_000_000) -> None:
    """A ~63-byte GraphDef: one Const named as a DeepLab variable declaring `values` floats."""
    from tensorboard.compat.proto import graph_pb2, types_pb2

    graph = graph_pb2.GraphDef()
    node = graph.node.add(name="xception_65/entry_flow/conv1_1/weights", op="Const")
    tensor = node.attr["value"].tensor
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=values)
    tensor.float_val.append(1.0)
    path.write_bytes(graph.SerializeToString())


def tar_gz_bomb(path: Path, member: str, size: int) -> None:
    """A .tar.gz with one member of `size` zero bytes (1 GB in ~1 MB)."""
    info = tarfile.TarInfo(member)
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    padding = -size % 512 + 1024
    data, crc, total = deflate_parts([header, size + padding])
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    path.write_bytes(gzip_header + data + struct.pack("<II", crc, total & 0xFFFFFFFF))


def dense_clip(
    root: Path, frames: int = 3, size: int = 32, video_frames: int | None = None
) -> Path:
    """OUTPUT/dense/<clip>/ with good files: `frames` depth maps, camera.json, and a left/right
    video of `video_frames` (default `frames`) frames."""
    folder = root / "dense" / CLIP
    folder.mkdir(parents=True)
    video = np.zeros((video_frames or frames, size, size, 3), np.uint8)
    video[..., 0] = np.arange(size, dtype=np.uint8)[None, :] * 4
    (folder / "left.mp4").write_bytes(encode_frames(video))
    (folder / "right.mp4").write_bytes(encode_frames(video))
    (folder / "depth.npz").write_bytes(encode_depth(np.full((frames, size, size), 3.0)))
    (folder / "camera.json").write_text(camera_json(frames, size))
    return folder


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --- 1: dense outputs --------------------------------------------------------------------


def test_dense_depth_declaring_more_than_the_clip_is_refused_from_its_header(tmp_path):
    folder = dense_clip(tmp_path)
    npz_bomb(folder / "depth.npz", "depth", (12, 1024, 1024), "<f2")  # 25 MB declared
    assert (folder / "depth.npz").stat().st_size < 100_000
    with pytest.raises(DenseOutputError, match=r"depth.npz.*1024x1024, the clip's are 32x32"):
        read_dense(str(tmp_path), CLIP, ("depth",))
    # more frames than the clip, right size: refused too (before decompression)
    npz_bomb(folder / "depth.npz", "depth", (400, 32, 32), "<f2")
    with pytest.raises(DenseOutputError, match=r"depth.npz: declares 400 frames, the clip has 3"):
        read_dense(str(tmp_path), CLIP, ("depth",), num_frames=3)
    # no expectation at all: the pixel cap, a ResourceLimitError naming the file
    bomb = io.BytesIO()
    npz_bomb(tmp_path / "b.npz", "depth", (2, 4096, 4096), "<f2")
    bomb.write((tmp_path / "b.npz").read_bytes())
    with pytest.raises(
        ResourceLimitError, match=r"x.npz: frames of 4096x4096.*S4D_MAX_DENSE_FRAME"
    ):
        decode_depth(bomb.getvalue(), "x.npz")


def test_dense_video_is_decoded_only_to_the_clips_frames_and_size(tmp_path, monkeypatch):
    dense_clip(tmp_path, frames=3, video_frames=8)
    left = read_dense(str(tmp_path), CLIP, ("left",))["left"]
    assert left.shape == (3, 32, 32, 3)  # the clip's 3 frames, not the video's 8
    assert read_dense(str(tmp_path), CLIP, ("left",), num_frames=2)["left"].shape[0] == 2
    with pytest.raises(DenseOutputError, match=r"camera.json: 3 frames, the clip 5"):
        read_dense(str(tmp_path), CLIP, ("left",), num_frames=5)
    # a frame size over the cap: refused from the stream header, a limit error
    monkeypatch.setenv("S4D_MAX_DENSE_FRAME_PIXELS", "1000")
    with pytest.raises(ResourceLimitError, match=r"left.mp4: frames of 32x32 = 1024 pixels"):
        read_dense(str(tmp_path), CLIP, ("left",))
    monkeypatch.setenv("S4D_MAX_DENSE_FRAME_PIXELS", "lots")
    with pytest.raises(InputError, match="S4D_MAX_DENSE_FRAME_PIXELS='lots'"):
        read_dense(str(tmp_path), CLIP, ("left",))


def test_dense_video_of_another_size_and_bad_camera_json_are_clear_errors(tmp_path):
    folder = dense_clip(tmp_path, frames=3)
    (folder / "left.mp4").write_bytes(encode_frames(np.zeros((3, 64, 64, 3), np.uint8)))
    with pytest.raises(DenseOutputError, match=r"left.mp4: frames are 64x64, the clip's are 32x32"):
        read_dense(str(tmp_path), CLIP, ("left",))
    for text, why in (
        ("[" * 100_000, "not valid JSON"),
        (json.dumps({"num_frames": "3", "width": 32, "height": 32}), "num_frames"),
        (json.dumps({"num_frames": 3, "width": 32, "height": 32, "intrinsics": [1]}), "intrin"),
    ):
        (folder / "camera.json").write_text(text)
        with pytest.raises(DenseOutputError, match=f"dense camera.json: {why}"):
            read_dense(str(tmp_path), CLIP, ("depth",))


# --- 2: TracksTo4D config ------------------------------------------------------------------


TINY = {"network_width1": 32, "positional_dim": 4, "K_basis": 4, "network_depth": 2, "heads": 2, "dim_head": 16, "mlp_dim": 64, "camera_kernel_size": 7}  # fmt: skip


@pytest.fixture
def tiny_tracksto4d(tmp_path) -> Path:
    from s4d_ray.models.tracksto4d import TracksTo4D, save_tracksto4d

    path = tmp_path / "tiny.pt"
    save_tracksto4d(TracksTo4D(TINY), str(path))
    return path


def test_tracksto4d_config_bounds_and_types_are_checked_before_building(
    tiny_tracksto4d, monkeypatch
):
    from s4d_ray.models import tracksto4d

    config_path = tiny_tracksto4d.with_suffix(".json")
    for change, match in (
        ({"network_depth": 60}, r"network_depth must be an integer in \[1, 32\], got 60"),
        ({"network_width1": 8192}, r"network_width1 must be an integer in \[1, 4096\]"),
        ({"network_width1": "256"}, r"network_width1 must be an integer.*'256'"),
        ({"heads": 2.5}, r"heads must be an integer"),
        ({"use_visible_input": "yes"}, r"use_visible_input must be 0/1"),
        ({"sparsity_dynamic_coeff": [1]}, r"sparsity_dynamic_coeff must be a finite number"),
    ):
        config_path.write_text(json.dumps({**TINY, **change}))
        with pytest.raises(CheckpointError, match=rf"tiny.json.*{match}"):
            tracksto4d.load_tracksto4d(str(tiny_tracksto4d))
    config_path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="tiny.json.*JSON object"):
        tracksto4d.load_tracksto4d(str(tiny_tracksto4d))

    # in bounds but not the checkpoint's network: compared on a meta-device model, so the
    # real (here 1024-wide, 8-deep: ~0.7 GB) network is never built
    built: list[str] = []

    class Recording(tracksto4d.TracksTo4D):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(next(self.parameters()).device.type)

    monkeypatch.setattr(tracksto4d, "TracksTo4D", Recording)
    big = {**TINY, "network_width1": 1024, "network_depth": 8, "mlp_dim": 8192}
    config_path.write_text(json.dumps(big))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="does not match.*width 1024"):
        tracksto4d.load_tracksto4d(str(tiny_tracksto4d))
    assert built == ["meta"] and time.perf_counter() - start < 10
    config_path.write_text(json.dumps(TINY))
    tracksto4d.load_tracksto4d(str(tiny_tracksto4d))
    assert built == ["meta", "meta", "cpu"]  # the shape check, then the real model


# --- 3: DeepLab ----------------------------------------------------------------------------


def test_deeplab_const_declaring_250m_floats_is_refused_unconverted(tmp_path):
    from s4d_ray.models import deeplab

    path = tmp_path / "bomb.pb"
    deeplab_const_bomb(path)
    assert path.stat().st_size < 100
    with pytest.raises(CheckpointError, match=r"bomb.pb: not the DeepLabv3\+ .* variables missing"):
        deeplab.load_deeplab(str(path))
    tensor = deeplab.graph_pb2.GraphDef.FromString(path.read_bytes()).node[0].attr["value"].tensor
    with pytest.raises(ValueError, match=r"declares 250000000 values, more than 27"):
        deeplab.tensor_proto_to_numpy(tensor, max_elements=27)
    tensor.tensor_shape.dim[0].size = 4
    tensor.tensor_content = b"\0" * 12  # 3 floats for 4
    with pytest.raises(ValueError, match="holds 12 bytes, shape \\[4\\] needs 16"):
        deeplab.tensor_proto_to_numpy(tensor)


def test_deeplab_tar_member_over_the_cap_is_refused_before_extraction(tmp_path, monkeypatch):
    from s4d_ray.models import deeplab

    path = tmp_path / "deeplab.tar.gz"
    tar_gz_bomb(path, "model/frozen_inference_graph.pb", 3 << 20)
    monkeypatch.setenv("S4D_MAX_DEEPLAB_GRAPH_BYTES", str(1 << 20))
    with pytest.raises(ResourceLimitError, match=r"deeplab.tar.gz member model/frozen.*3145728"):
        deeplab.load_deeplab(str(path))
    sparse = tmp_path / "sparse.tar"
    sparse.write_bytes(gnu_sparse_tar([("model/frozen_inference_graph.pb", 1 << 30)]))
    with pytest.raises(CheckpointError, match="sparse.tar: .*a sparse tar member"):
        deeplab.load_deeplab(str(sparse))


def test_deeplab_safetensors_with_missing_or_invalid_config(tmp_path):
    from safetensors.torch import save_file

    from s4d_ray.models import deeplab

    path = tmp_path / "converted.safetensors"
    good = {"output_stride": 8, "atrous_rates": [12, 24, 36], "num_classes": 151}
    for metadata, match in (
        ({}, "has no config metadata"),
        ({"config": "{"}, "invalid DeepLab config metadata"),
        ({"config": json.dumps({**good, "output_stride": 7})}, "output_stride must be one of"),
        ({"config": json.dumps({**good, "atrous_rates": [1, 2]})}, "atrous_rates must be 3"),
        ({"config": json.dumps({**good, "num_classes": 10**9})}, r"num_classes must be .*4096"),
        ({"config": json.dumps([1])}, "config is a list"),
    ):
        save_file({"w": torch.zeros(1)}, str(path), metadata={"format": deeplab.SAFETENSORS_FORMAT, **metadata})  # fmt: skip
        with pytest.raises(CheckpointError, match=f"converted.safetensors: .*{match}"):
            deeplab.load_deeplab(str(path))


# --- 4: checkpoints ------------------------------------------------------------------------


def test_text_files_and_folders_given_as_checkpoints(tmp_path, tiny_tracksto4d):
    from s4d_ray.models.dynadust3r import load_dust3r
    from s4d_ray.models.tapir import load_bootstap
    from s4d_ray.models.tracksto4d import load_tracksto4d

    text = tmp_path / "notes.pt"
    text.write_text("epoch: 3\nthis is not a checkpoint\n")
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    for load in (load_bootstap, load_dust3r, lambda uri: load_tracksto4d(uri, config=TINY)):
        with pytest.raises(CheckpointError, match=r"notes.pt' is not a .*not a zip archive"):
            load(str(text))
        with pytest.raises(CheckpointError, match=r"folder.pt.* is not a regular file \(a folder"):
            load(str(folder))


def test_deflated_storage_in_a_torch_zip_is_refused_from_the_central_directory(tmp_path):
    from s4d_ray.models.tracksto4d import load_tracksto4d

    path = tmp_path / "bomb.pt"
    torch_storage_bomb(path, 64 << 20)
    assert path.stat().st_size < 200_000
    with pytest.raises(
        ResourceLimitError, match=r"bomb.pt.*'archive/data/0': 67108864\).*EXPANSION"
    ):
        load_tracksto4d(str(path), config=TINY)
    # the same file's storage within a raised expansion limit is a real torch zip: it loads
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("S4D_MAX_CHECKPOINT_EXPANSION", "100000")
        loaded = load_torch_checkpoint(str(path))
    assert loaded["model_state_dict"]["w"].shape == (16 << 20,)
    with pytest.raises(ResourceLimitError, match="more than the limit of 1000 "):
        load_torch_checkpoint(str(path), max_bytes=1000)


def dust3r_file(tmp_path: Path, **changes: str) -> str:
    fields = {
        "pos_embed": "'RoPE100'",
        "head_type": "'dpt'",
        "output_mode": "'pts3d'",
        "depth_mode": "('exp', -inf, inf)",
        "conf_mode": "('exp', 1, inf)",
        **changes,
    }
    args = argparse.Namespace(
        model="AsymmetricCroCo3DStereo(" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")"
    )
    path = tmp_path / "dust3r.pth"
    torch.save({"args": args, "model": {"x": torch.zeros(1)}}, path)
    return str(path)


def test_dust3r_nan_rope_and_infinite_confidence_are_refused_at_load(tmp_path):
    from s4d_ray.models.dynadust3r import load_dust3r

    for change, match in (
        ({"pos_embed": "'RoPEnan'"}, r"pos_embed / rope_freq .*got nan"),
        ({"pos_embed": "'RoPEinf'"}, r"pos_embed / rope_freq .*got inf"),
        ({"pos_embed": "'RoPE-5'"}, r"pos_embed / rope_freq .*got -5"),
        ({"conf_mode": "('exp', inf, inf)"}, r"conf_mode must have a finite minimum"),
        ({"conf_mode": "('sigmoid', 0, inf)"}, r"conf_mode must have a finite minimum"),
        ({"conf_mode": "('exp', 1, 1)"}, r"conf_mode must have a finite minimum"),
    ):
        with pytest.raises(CheckpointError, match=rf"dust3r.pth.*{match}") as error:
            load_dust3r(dust3r_file(tmp_path, **change))
        assert "\n" not in str(error.value)
    # the valid default transform is still accepted (the error is the tiny state dict's)
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_dust3r(dust3r_file(tmp_path, enc_depth="1", dec_depth="1"))


# --- 5: pointmap tars ---------------------------------------------------------------------


def orbit_poses(num_frames: int) -> np.ndarray:
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    for t in range(num_frames):
        angle = 0.02 * t
        poses[t, 0, 0] = poses[t, 2, 2] = np.cos(angle)
        poses[t, 0, 2], poses[t, 2, 0] = np.sin(angle), -np.sin(angle)
        poses[t, :3, 3] = [0.05 * t, 0.01 * t, 0.03 * t]
    return poses


def reference(key: str, num_frames: int = 3, size: int = 32, poses=None) -> dict[str, bytes]:
    v, u = np.mgrid[0:size, 0:size] / size
    depth = np.repeat((4.0 + np.sin(3 * u) * np.cos(2 * v))[None], num_frames, 0)
    return {
        "__key__": key,
        "depth.npy": npy_bytes(depth.astype(np.float16)),
        "mask.npy": npy_bytes(depth > 0),
        "intrinsics.npy": npy_bytes(intrinsics(size, size, 60.0).astype(np.float32)),
        "camera2world.npy": npy_bytes(
            (orbit_poses(num_frames) if poses is None else poses).astype(np.float32)
        ),
        "meta.json": json.dumps({"clip_id": key}).encode(),
    }


def prediction(raw: dict[str, bytes]) -> dict[str, bytes]:
    from s4d_ray.pointmaps.geometry import depth_to_pointmaps

    depth, k, poses = (np.load(io.BytesIO(raw[f"{n}.npy"])) for n in ("depth", "intrinsics", "camera2world"))  # fmt: skip
    points = depth_to_pointmaps(depth * 1.05, k, poses)
    return {"__key__": raw["__key__"], "pointmaps.npy": npy_bytes(points)}


def tar_of(samples: list[dict]) -> bytes:
    return gnu_sparse_tar(
        [
            (f"{s['__key__']}.{name}", data)
            for s in samples
            for name, data in s.items()
            if name != "__key__"
        ]  # fmt: skip
    )


def test_gnu_sparse_member_is_refused_unread_and_the_next_sample_still_comes(tmp_path):
    good = reference("good")
    shard = tmp_path / "ref.tar"
    shard.write_bytes(tar_of([{"__key__": "bomb", "depth.npy": 1 << 30}, good]))
    assert shard.stat().st_size < 20_000
    with tarfile.open(shard) as tar:  # the member really is a 1 GiB sparse one
        assert tar.getmember("bomb.depth.npy").size == 1 << 30
    raws = list(iter_raw_samples(str(shard)))
    assert [r["__key__"] for r in raws] == ["bomb", "good"]
    with pytest.raises(SampleError, match=r"sample 'bomb' depth.npy: a sparse tar member"):
        decode_sample(raws[0])
    assert decode_sample(raws[1])["depth"].shape == (3, 32, 32)


def test_sample_member_over_the_cap_is_a_limit_error(tmp_path, monkeypatch):
    shard = tmp_path / "ref.tar"
    shard.write_bytes(tar_of([reference("big"), reference("next")]))
    monkeypatch.setenv("S4D_MAX_SAMPLE_MEMBER_BYTES", "4000")
    raws = list(iter_raw_samples(str(shard)))
    with pytest.raises(ResourceLimitError, match=r"sample 'big' depth.npy: \d+ bytes, .* 4000"):
        decode_sample(raws[0])
    monkeypatch.setenv("S4D_MAX_SAMPLE_MEMBER_BYTES", "100000")
    monkeypatch.setenv("S4D_MAX_SAMPLE_BYTES", "5000")
    raws = list(iter_raw_samples(str(shard)))
    assert len(raws) == 2
    with pytest.raises(ResourceLimitError, match=r"sample 'next' .*S4D_MAX_SAMPLE_BYTES"):
        decode_sample(raws[1])


def hostile_samples() -> list[dict]:
    """One bad reference sample per defect, each named for it."""
    deep = reference("deep_meta")
    deep["meta.json"] = b"[" * 100_000 + b"]" * 100_000
    no_mask = reference("no_mask")
    del no_mask["mask.npy"]
    bad_k = reference("bad_k")
    bad_k["intrinsics.npy"] = npy_bytes(np.eye(4, dtype=np.float32))
    nan_poses = reference("nan_poses", poses=np.full((3, 4, 4), np.nan))
    npz_member = reference("npz_member")
    buffer = io.BytesIO()
    np.savez(buffer, depth=np.ones((3, 32, 32), np.float16))
    npz_member["depth.npy"] = buffer.getvalue()
    return [deep, no_mask, bad_k, nan_poses, npz_member]


def test_corrupt_sample_members_are_sample_errors_naming_sample_and_member():
    expected = {
        "deep_meta": r"sample 'deep_meta' meta.json: not valid JSON: RecursionError",
        "bad_k": r"sample 'bad_k' intrinsics.npy: shape \[4, 4\], expected \[3,3\]",
        "nan_poses": r"sample 'nan_poses' camera2world.npy: contains NaN",
        "npz_member": r"sample 'npz_member' depth.npy: not an .npy array",
    }
    for raw in hostile_samples():
        key = raw["__key__"]
        if key in expected:
            with pytest.raises(SampleError, match=expected[key]) as error:
                decode_sample(raw)
            assert "\n" not in str(error.value)
    with pytest.raises(SampleError, match=r"x.npy: header says \[100000000\]"):
        load_npy(npy_header((100_000_000,), "<f4") + bytes(64), "x.npy")


def test_eval_pointmaps_scores_the_good_samples_and_records_one_row_per_bad_one(tmp_path):
    from s4d_ray.cli import main

    static = reference("static", poses=np.tile(np.eye(4), (3, 1, 1)))
    samples = [reference("good"), static, *hostile_samples()]
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "a.tar").write_bytes(
        tar_of([*samples, {"__key__": "sparse", "depth.npy": 1 << 30}])
    )
    preds = [prediction(s) for s in samples[:2]]
    preds += [prediction(reference(s["__key__"])) for s in samples[2:]]
    preds.append({"__key__": "sparse", "pointmaps.npy": npy_bytes(np.zeros((3, 32, 32, 3)))})
    (tmp_path / "pred.tar").write_bytes(tar_of(preds))
    out = tmp_path / "eval.json"
    assert main(["eval-pointmaps", "--pred", str(tmp_path / "pred.tar"), "--ref", str(tmp_path / "ref"), "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert sorted(result["per_sample"]) == ["good", "static"]
    assert result["samples"] == 2 and abs(result["mean"]["abs_rel_metric"] - 0.05) < 1e-3
    assert np.isnan(result["per_sample"]["static"]["ate_sim3_m"])  # undefined, not a crash
    failed = result["failed"]
    assert sorted(failed) == ["bad_k", "deep_meta", "nan_poses", "no_mask", "npz_member", "sparse"]  # fmt: skip
    assert "no mask.npy" in failed["no_mask"] and "sparse tar member" in failed["sparse"]
    # a prediction whose member is a sparse bomb is that sample's failure row
    bomb_pred = [p for p in preds if p["__key__"] != "good"]
    bomb_pred.append({"__key__": "good", "pointmaps.npy": 1 << 30})
    (tmp_path / "pred2.tar").write_bytes(tar_of(bomb_pred))
    assert main(["eval-pointmaps", "--pred", str(tmp_path / "pred2.tar"), "--ref", str(tmp_path / "ref"), "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert sorted(result["per_sample"]) == ["static"]
    assert "prediction 'good' pointmaps.npy: a sparse tar member" in result["failed"]["good"]


# --- 6: static cameras in the pose metrics and evaluators -----------------------------------


def test_static_ground_truth_is_a_value_error_not_a_division_by_zero():
    moving = orbit_poses(6)
    static = np.tile(np.eye(4), (6, 1, 1))
    for estimate, truth, which in ((moving, static, "ground-truth"), (static, moving, "estimated")):
        with pytest.raises(ValueError, match=f"Sim.3. alignment is undefined: the {which} camera"):
            ate_sim3(estimate, truth)
        with pytest.raises(ValueError, match="undefined"):
            pose_report(estimate, truth)
    assert ate_se3(moving, static).rmse > 0 and rpe(moving, static).pairs == 5  # still defined
    # uncorrelated trajectories (covariance 0): also undefined rather than a scale of 0
    line = np.tile(np.eye(4), (4, 1, 1))
    line[:, 0, 3] = [0, 1, 0, 1]
    other = np.tile(np.eye(4), (4, 1, 1))
    other[:, 1, 3] = [0, 0, 1, 1]
    with pytest.raises(ValueError, match="scale 0"):
        ate_sim3(line, other)


def test_eval_tracksto4d_records_a_failure_row_per_bad_clip(tmp_path, tiny_tracksto4d, monkeypatch):
    from s4d_ray.io.clip_io import write_clip
    from s4d_ray.tracksto4d import data, evaluate, inference
    from tests.test_clip_io import make_record

    good, still = make_record(seed=1), make_record(seed=2)
    still.name = "abcDEF-_123_99999"
    still.camera2world[:, :, 3] = 0  # a static camera
    folder = tmp_path / "clips"
    folder.mkdir()
    for record in (good, still):
        write_clip(record, str(folder / f"{record.name}.npz"))
    (folder / "abcDEF-_123_11111.npz").write_text("not an npz")

    def fake_tracks(record):
        n, t = record.num_tracks, record.num_frames
        return SimpleNamespace(clip_id=record.name, depth=np.full((n, t), 2.0), visible=np.ones((n, t), bool), points_world=np.zeros((n, t, 3)), camera2world=record.camera2world, num_frames=t)  # fmt: skip

    def fake_predict(model, tracks, config, device):
        moving = orbit_poses(tracks.num_frames)[:, :3]
        return SimpleNamespace(tracks=np.arange(tracks.depth.shape[0]), depth=tracks.depth * 1.1, camera2world=moving)  # fmt: skip

    monkeypatch.setattr(data, "clip_tracks", fake_tracks)
    monkeypatch.setattr(inference, "predict_clip", fake_predict)
    result = evaluate.evaluate_checkpoint(str(tiny_tracksto4d), str(folder), device="cpu")
    assert sorted(result["clips"]) == [good.name]
    assert sorted(result["failed"]) == ["abcDEF-_123_11111", still.name]
    assert "does not move" in result["failed"][still.name]
    assert result["summary"]["clips"] == 1 and result["summary"]["failed"] == 2
    (folder / f"{good.name}.npz").unlink()
    with pytest.raises(StageError, match=r"eval-tracksto4d.*\(and 1 more clips failed\)"):
        evaluate.evaluate_checkpoint(str(tiny_tracksto4d), str(folder), device="cpu")


def test_pose_qa_of_a_static_clip_is_one_error_row(monkeypatch):
    from s4d_ray.ownvideo import qa
    from tests.test_clip_io import make_record

    record = make_record(num_frames=6)
    record.camera2world[:, :, 3] = 0
    monkeypatch.setattr(qa, "read_clip", lambda uri: record)
    monkeypatch.setattr(qa, "find_raw_video", lambda *args: "video.mp4")
    monkeypatch.setattr(qa, "rectify_clip", lambda record, video: (None, None))
    poses = SimpleNamespace(camera2world=orbit_poses(6)[:, :3], num_points=10, rms_px=0.5)
    monkeypatch.setattr(qa, "estimate_poses", lambda *args, **kwargs: poses)
    rows = qa.pose_qa(["a/x.npz", "a/y.npz"], "videos")
    assert len(rows) == 2 and all("Sim(3) alignment is undefined" in r["error"] for r in rows)


# --- memory of the bombs (VmHWM of fresh interpreters) --------------------------------------


MEASURE = """
import re
from s4d_ray.errors import InputError
from s4d_ray.io.dense import read_dense
from s4d_ray.models.deeplab import load_deeplab
from s4d_ray.models.tracksto4d import load_tracksto4d
from s4d_ray.pointmaps.evaluate import evaluate_pointmaps
from s4d_ray.pointmaps.reader import decode_sample, iter_raw_samples

def hwm():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) * 1024

ROOT = {root!r}
calls = {{
    "dense_depth": lambda: read_dense(ROOT + "/dense_depth", "{clip}", ("depth",)),
    "dense_video": lambda: read_dense(ROOT + "/dense_video", "{clip}", ("left",)),
    "tracksto4d_config": lambda: load_tracksto4d(ROOT + "/t4d_config/tiny.pt"),
    "torch_storage": lambda: load_tracksto4d(ROOT + "/bomb.pt", config={tiny!r}),
    "deeplab_const": lambda: load_deeplab(ROOT + "/const.pb"),
    "deeplab_tar": lambda: load_deeplab(ROOT + "/deeplab.tar.gz"),
    "sparse_reader": lambda: [decode_sample(r) for r in iter_raw_samples(ROOT + "/ref/a.tar")],
    "sparse_eval": lambda: evaluate_pointmaps(ROOT + "/pred.tar", ROOT + "/ref"),
}}
print("PEAK baseline", hwm())
for name, call in calls.items():
    try:
        call()
        print("NOT REFUSED", name)
    except InputError as error:
        print("PEAK", name, hwm(), type(error).__name__, str(error)[:100])
"""


@pytest.mark.slow
def test_every_bomb_is_refused_within_500_mb_of_the_baseline(tmp_path):
    from s4d_ray.models.tracksto4d import TracksTo4D, save_tracksto4d

    depth_root = tmp_path / "dense_depth"
    npz_bomb(dense_clip(depth_root, frames=12, size=512) / "depth.npz", "depth", (12, 4096, 4096), "<f2")  # fmt: skip
    video_root = tmp_path / "dense_video"
    folder = dense_clip(video_root, frames=12, size=512)
    (folder / "left.mp4").write_bytes(encode_frames(np.zeros((2, 4096, 4096, 3), np.uint8)))
    (folder / "camera.json").write_text(camera_json(1, 4096))  # consistent with the bomb
    (tmp_path / "t4d_config").mkdir()
    save_tracksto4d(TracksTo4D(TINY), str(tmp_path / "t4d_config" / "tiny.pt"))
    (tmp_path / "t4d_config" / "tiny.json").write_text(json.dumps({**TINY, "network_width1": 4096, "network_depth": 32, "mlp_dim": 16384}))  # fmt: skip
    torch_storage_bomb(tmp_path / "bomb.pt", 1 << 30)
    deeplab_const_bomb(tmp_path / "const.pb")
    tar_gz_bomb(tmp_path / "deeplab.tar.gz", "model/frozen_inference_graph.pb", 1 << 30)
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "a.tar").write_bytes(
        tar_of(
            [{"__key__": "bomb", "depth.npy": 1 << 30, "mask.npy": 1 << 30}, reference("good")]
        )  # fmt: skip
    )
    (tmp_path / "pred.tar").write_bytes(tar_of([{"__key__": "good", "pointmaps.npy": 1 << 30}, {"__key__": "bomb", "pointmaps.npy": 1 << 30}]))  # fmt: skip
    sizes = {p.name: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    assert sizes["bomb.pt"] < 2 << 20 and sizes["deeplab.tar.gz"] < 2 << 20
    assert sizes["const.pb"] < 100 and sizes["a.tar"] < 20_000

    # one fresh interpreter: VmHWM after the imports is the baseline, then after each bomb in
    # turn (a high-water mark never goes down: each figure bounds that bomb and all before it)
    _, out = peak_rss_of(MEASURE.format(root=str(tmp_path), clip=CLIP, tiny=TINY))
    assert "NOT REFUSED" not in out, out
    peaks = {line.split()[1]: int(line.split()[2]) for line in out.splitlines() if line.startswith("PEAK")}  # fmt: skip
    baseline = peaks.pop("baseline")
    assert len(peaks) == 8, out
    print(f"\nbaseline VmHWM {baseline / 2**20:.0f} MiB; high-water mark over it after each bomb:")
    for bomb, peak in peaks.items():
        print(f"  {bomb}: {(peak - baseline) / 2**20:+.1f} MiB")
    assert max(peaks.values()) - baseline < 500 << 20, peaks
