"""Dense per-clip outputs (`--dense`): rectified frames as video, stereo depth, intrinsics.

Layout under an engine output root (every name a pure function of the clip id; each file is
written atomically, the npz and Parquet row of the clip only after them):

    OUTPUT/dense/<clip_id>/left.mp4     rectified left frames [T,S,S,3]: H.264 yuv420p, crf 18
    OUTPUT/dense/<clip_id>/right.mp4    rectified right frames, same encoding
    OUTPUT/dense/<clip_id>/depth.npz    `depth` float16 [T,S,S] m (0 = invalid: the validity
                                        mask is exactly `depth > 0`), deflate-compressed
    OUTPUT/dense/<clip_id>/camera.json  intrinsics [3,3] px, size, hfov (deg), baseline (m),
                                        frame count, encodings

Encodings chosen by measurement on engine outputs of a synthetic clip (24 frames, 512², CPU
stereo; `benchmarks/bench_pointmaps.py` repeats it):
frames — H.264 crf 18 `veryfast` 4.8 kB/frame at 38.7 dB PSNR, 19 ms/frame to encode, against
lossless libx264rgb 205–237 kB/frame and FFV1 135 kB/frame (28–50× larger; the reference's own
rectified videos are lossy H.264 too). Depth — float16 + deflate 33 kB/frame, relative error
≤ 2⁻¹¹ = 0.049 % (median 0.017 %), against quantised inverse depth as uint16 PNG 61–68 kB/frame
and float16 bits as PNG 63 kB/frame.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import av
import numpy as np

from s4d_ray.errors import InputError, ResourceLimitError
from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, STEREO_BASELINE_M, intrinsics
from s4d_ray.io import fs
from s4d_ray.io.clip_io import npy_header_within, read_npz_members
from s4d_ray.io.ids import validate_clip_id
from s4d_ray.limits import env_limit

DENSE_DIR = "dense"
DENSE_FILES = ("left.mp4", "right.mp4", "depth.npz", "camera.json")
VIDEO_CRF = 18
VIDEO_PRESET = "veryfast"
VIDEO_FPS = 30
DEPTH_COMPRESSLEVEL = 6

# Limits on what a dense file may declare (checked from headers before anything is decoded;
# issue: a 392 KB depth.npz declaring [12,4096,4096] cost 1.3 GB). Each is raised by its
# environment variable.
MAX_DENSE_FRAME_PIXELS = 2048 * 2048
"""Default cap on H x W of one dense frame or depth map (the engine writes 512²);
`$S4D_MAX_DENSE_FRAME_PIXELS` raises it."""
MAX_DENSE_BYTES = 2 << 30
"""Default cap on one decoded dense array (frames T·H·W·3 uint8, depth T·H·W float32, and the
uncompressed depth member); `$S4D_MAX_DENSE_BYTES` raises it."""
MAX_DENSE_FILE_BYTES = 1 << 30
"""Default cap on the size of one dense file read into memory; `$S4D_MAX_DENSE_FILE_BYTES`."""
MAX_CAMERA_JSON_BYTES = 1 << 20
"""camera.json is a few hundred bytes; larger is refused unread."""


class DenseOutputError(InputError):
    """A dense output file is missing, corrupt or inconsistent (names clip and file)."""


class DenseLimitError(DenseOutputError, ResourceLimitError):
    """A dense output whose declared size (from its headers) is over a limit."""


def dense_limits() -> tuple[int, int, int]:
    """(frame pixels, decoded bytes, file bytes) caps in force: the defaults or the env."""
    return (
        env_limit("S4D_MAX_DENSE_FRAME_PIXELS", MAX_DENSE_FRAME_PIXELS),
        env_limit("S4D_MAX_DENSE_BYTES", MAX_DENSE_BYTES),
        env_limit("S4D_MAX_DENSE_FILE_BYTES", MAX_DENSE_FILE_BYTES),
    )


def check_dense_shape(
    label: str,
    shape: tuple[int, ...],
    itemsize: int,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> None:
    """Refuse a declared dense array [T,H,W,...] before it is decoded: T more than `frames`
    (the clip's), (H, W) other than `size`, H·W over the pixel cap, or the decoded array
    (`itemsize` bytes per pixel) over the byte cap. DenseOutputError / DenseLimitError."""
    max_pixels, max_bytes, _ = dense_limits()
    t, h, w = (int(n) for n in shape[:3])
    if size is not None and (h, w) != tuple(size):
        raise DenseOutputError(f"{label}: frames are {h}x{w}, the clip's are {size[0]}x{size[1]}")
    if frames is not None and t > frames:
        raise DenseOutputError(f"{label}: declares {t} frames, the clip has {frames}")
    if h * w > max_pixels:
        raise DenseLimitError(
            f"{label}: frames of {h}x{w} = {h * w} pixels, more than the limit of {max_pixels} "
            "(S4D_MAX_DENSE_FRAME_PIXELS)"
        )
    nbytes = t * h * w * itemsize
    if nbytes > max_bytes:
        raise DenseLimitError(
            f"{label}: [{t},{h},{w}] would take {nbytes} bytes decoded, more than the limit of "
            f"{max_bytes} (S4D_MAX_DENSE_BYTES)"
        )


def dense_dir(output_root: str, clip_id: str) -> str:
    """OUTPUT/dense/<clip_id> (the id is validated before it becomes a path)."""
    return fs.join(output_root, DENSE_DIR, validate_clip_id(clip_id))


def dense_file(output_root: str, clip_id: str, name: str) -> str:
    """URI of one dense file of a clip (`name` one of DENSE_FILES)."""
    if name not in DENSE_FILES:
        raise ValueError(f"unknown dense file {name!r}; files are {DENSE_FILES}")
    return fs.join(dense_dir(output_root, clip_id), name)


def output_root_of_npz(npz_uri: str) -> str:
    """The engine output root of OUTPUT/npz/<clip_id>.npz (its folder's parent)."""
    sep = "/" if "/" in npz_uri else "\\"
    parts = npz_uri.rstrip(sep).split(sep)
    return sep.join(parts[:-2]) if len(parts) > 2 else "."


# --- frames ------------------------------------------------------------------------------


def encode_frames(frames: np.ndarray, crf: int = VIDEO_CRF, preset: str = VIDEO_PRESET) -> bytes:
    """RGB frames [T,H,W,3] uint8 (H, W even) → H.264 mp4 bytes (yuv420p, `crf`, 30 fps)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(
            f"frames must be uint8 [T,H,W,3] with T > 0, got {frames.dtype} {frames.shape}"
        )
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(VIDEO_FPS))
        stream.pix_fmt = "yuv420p"
        stream.height, stream.width = frames.shape[1:3]
        stream.options = {"crf": str(crf), "preset": preset}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def decode_frames(
    data: bytes,
    label: str = "",
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """mp4 bytes → RGB frames [T,H,W,3] uint8, in order: at most `max_frames` (the clip's T)
    of size `size` (H, W) when given. The stream's frame size is checked from its header
    against `size` and the caps (`check_dense_shape`) before any frame is decoded, and each
    decoded frame again, so a 4096² stream or one longer than the clip costs nothing."""
    _, max_bytes, _ = dense_limits()
    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), "r") as container:
            if not container.streams.video:
                raise DenseOutputError(f"{label}: no video stream")
            stream = container.streams.video[0]
            declared = (stream.codec_context.height, stream.codec_context.width)
            if min(declared) > 0:
                check_dense_shape(label, (max_frames or 1, *declared), 3, None, size)
            for frame in container.decode(stream):
                if max_frames is not None and len(frames) >= max_frames:
                    break
                hw = (frame.height, frame.width)
                if frames and hw != frames[0].shape[:2]:
                    raise DenseOutputError(f"{label}: frame size changes mid-stream")
                check_dense_shape(label, (len(frames) + 1, *hw), 3, max_frames, size)
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, IndexError, OSError) as e:
        raise DenseOutputError(f"{label}: cannot decode video: {e}") from e
    if not frames:
        raise DenseOutputError(f"{label}: video has no frames")
    if len(frames) * frames[0].nbytes > max_bytes:  # defensive: checked per frame above
        raise DenseLimitError(f"{label}: decoded frames over {max_bytes} bytes")
    return np.stack(frames)


# --- depth -------------------------------------------------------------------------------


def encode_depth(depth: np.ndarray) -> bytes:
    """Depth [T,H,W] m (0 or non-finite = invalid) → npz bytes with `depth` float16, deflated.

    Float16 keeps every depth to 2⁻¹¹ relative (0.049 %); invalid pixels become exactly 0.
    """
    depth = np.asarray(depth, np.float32)
    if depth.ndim != 3:
        raise ValueError(f"depth must be [T,H,W], got {depth.shape}")
    clean = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float16)
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=DEPTH_COMPRESSLEVEL) as z,
        z.open("depth.npy", "w") as member,
    ):
        np.lib.format.write_array(member, clean, allow_pickle=False)
    return buffer.getvalue()


def depth_shape(data: bytes, label: str = "") -> tuple[int, int, int]:
    """(T, H, W) of `encode_depth` bytes from the npy header alone (no full decompression)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            info = z.getinfo("depth.npy")
            with z.open(info) as member:
                shape, _ = npy_header_within(member, info.file_size)
    except Exception as e:
        raise DenseOutputError(f"{label}: corrupt depth file: {type(e).__name__}: {e}") from e
    if len(shape) != 3:
        raise DenseOutputError(f"{label}: depth must be [T,H,W], got {shape}")
    frames, height, width = (int(n) for n in shape)
    return frames, height, width


def decode_depth(
    data: bytes,
    label: str = "",
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """npz bytes of `encode_depth` → depth float32 [T,H,W] m, 0 = invalid.

    Read through `clip_io.read_npz_members`: the zip and .npy headers are checked (size,
    then float16 [T,H,W] with T ≤ `max_frames`, (H, W) = `size` and within the caps) before
    the member is decompressed."""
    _, max_bytes, _ = dense_limits()

    def fail(member: str, message: str) -> Exception:
        error = DenseLimitError if "more than the limit" in message else DenseOutputError
        return error(f"{label}: member {member!r}: {message}")

    def check(member: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if len(shape) != 3 or dtype != np.float16:
            raise DenseOutputError(f"{label}: depth must be float16 [T,H,W], got {dtype} {shape}")
        check_dense_shape(label, shape, 4, max_frames, size)

    try:
        arrays = read_npz_members(data, label, ["depth"], max_bytes, check=check, fail=fail)
    except DenseOutputError:
        raise
    except Exception as e:  # zipfile/npy errors come in many types; all mean "corrupt"
        raise DenseOutputError(f"{label}: corrupt depth file: {type(e).__name__}: {e}") from e
    if "depth" not in arrays:
        raise DenseOutputError(f"{label}: corrupt depth file: no depth.npy member")
    return arrays["depth"].astype(np.float32)


# --- camera ------------------------------------------------------------------------------


def camera_json(
    num_frames: int,
    size: int,
    hfov_deg: float = RECTIFIED_HFOV_DEG,
    baseline_m: float = STEREO_BASELINE_M,
) -> str:
    """The camera description of a clip's dense outputs (square rectified views; the rig's
    baseline in metres, the video's own)."""
    return json.dumps(
        {
            "intrinsics": intrinsics(size, size, hfov_deg).tolist(),
            "width": size,
            "height": size,
            "hfov_deg": hfov_deg,
            "baseline_m": float(baseline_m),
            "num_frames": int(num_frames),
            "frames": {"codec": "h264", "pix_fmt": "yuv420p", "crf": VIDEO_CRF, "fps": VIDEO_FPS},
            "depth": {"dtype": "float16", "unit": "m", "invalid": 0},
        },
        sort_keys=True,
    )


def write_dense(
    output_root: str, clip_id: str, left: bytes, right: bytes, depth: bytes, camera: str
) -> dict[str, str]:
    """Write a clip's encoded dense outputs (each atomic); return {name: path relative to OUTPUT}."""
    files = {
        "left.mp4": left,
        "right.mp4": right,
        "depth.npz": depth,
        "camera.json": camera.encode(),
    }
    for name, data in files.items():
        if not data:
            raise DenseOutputError(f"clip {clip_id!r}: dense {name} is empty")
        fs.write_bytes(dense_file(output_root, clip_id, name), data)
    return dense_paths(clip_id)


def dense_paths(clip_id: str) -> dict[str, str]:
    """{name: path relative to OUTPUT} of a clip's dense files (`left`, `right`, `depth`,
    `camera`): what its npz lists as `dense_files`."""
    validate_clip_id(clip_id)
    return {name.split(".")[0]: f"{DENSE_DIR}/{clip_id}/{name}" for name in DENSE_FILES}


def dense_clip_ids(output_root: str) -> set[str]:
    """Clips with every dense file present under OUTPUT/dense (one listing, not one per clip)."""
    filesystem, path = fs.filesystem(fs.join(output_root, DENSE_DIR))
    if not filesystem.exists(path):
        return set()
    found: dict[str, set[str]] = {}
    for entry in filesystem.find(path):
        parts = entry.replace("\\", "/").rstrip("/").split("/")
        if len(parts) >= 2 and not parts[-1].startswith(".tmp-"):
            found.setdefault(parts[-2], set()).add(parts[-1])
    return {clip for clip, names in found.items() if set(DENSE_FILES) <= names}


def read_camera(data: bytes, label: str) -> dict[str, Any]:
    """camera.json bytes → dict, checked: `num_frames`, `width`, `height` positive integers,
    `intrinsics` finite [3,3] (DenseOutputError naming the file otherwise)."""
    try:
        camera = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise DenseOutputError(f"{label}: not valid JSON: {type(e).__name__}") from e
    if not isinstance(camera, dict):
        raise DenseOutputError(f"{label}: expected a JSON object, got {type(camera).__name__}")
    for key in ("num_frames", "width", "height"):
        value = camera.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DenseOutputError(f"{label}: {key} must be a positive integer, got {value!r}")
    try:
        k = np.asarray(camera.get("intrinsics"), np.float64)
    except (TypeError, ValueError):
        k = np.zeros(0)
    if k.shape != (3, 3) or not np.isfinite(k).all():
        raise DenseOutputError(f"{label}: intrinsics must be a finite 3x3 matrix")
    return camera


def _read_file(uri: str, label: str, max_bytes: int) -> bytes:
    try:
        return fs.read_bytes(uri, max_bytes=max_bytes)
    except FileNotFoundError as e:
        raise DenseOutputError(f"{label}: missing ({uri})") from e
    except fs.InputTooLargeError as e:
        raise DenseLimitError(f"{label}: {e} (S4D_MAX_DENSE_FILE_BYTES)") from e
    except fs.NotRegularFileError as e:
        raise DenseOutputError(f"{label}: {e}") from e


def read_dense(
    output_root: str,
    clip_id: str,
    parts: Iterable[str] = ("left", "depth", "camera"),
    num_frames: int | None = None,
) -> dict[str, Any]:
    """A clip's dense outputs: `left`/`right` uint8 [T,S,S,3], `depth` float32 [T,S,S] m
    (0 = invalid), `camera` dict (with `intrinsics` [3,3]). Raises DenseOutputError.

    Bounded before decoding: the frames and depth must have the clip's `num_frames` (else
    camera.json's) frames and camera.json's size, within the caps of `check_dense_shape`;
    only the clip's frames are decoded (a longer video is cut, a shorter one refused)."""
    parts = tuple(parts)
    names = {"left": "left.mp4", "right": "right.mp4", "depth": "depth.npz"}
    camera_uri = dense_file(output_root, clip_id, "camera.json")
    camera = None
    if "camera" in parts or fs.exists(camera_uri):
        label = f"clip {clip_id!r} dense camera.json"
        camera = read_camera(_read_file(camera_uri, label, MAX_CAMERA_JSON_BYTES), label)
    frames, size = num_frames, None
    if camera is not None:
        size = (camera["height"], camera["width"])
        if frames is None:
            frames = camera["num_frames"]
        elif camera["num_frames"] < frames:
            raise DenseOutputError(
                f"clip {clip_id!r} dense camera.json: {camera['num_frames']} frames, the clip "
                f"{frames}"
            )
    _, _, max_file = dense_limits()
    out: dict[str, Any] = {}
    for part in parts:
        if part == "camera":
            out[part] = camera
            continue
        name = names[part]
        label = f"clip {clip_id!r} dense {name}"
        data = _read_file(dense_file(output_root, clip_id, name), label, max_file)
        if part == "depth":
            out[part] = decode_depth(data, label, frames, size)
        else:
            out[part] = decode_frames(data, label, frames, size)
        got = len(out[part])
        if frames is not None and got < frames:
            raise DenseOutputError(f"{label}: {got} frames, the clip has {frames}")
    return out
