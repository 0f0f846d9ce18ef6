"""DynaDUSt3R inference: frame pairs in, pointmaps and 3D motion out (`s4d predict`, the actor)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping

import cv2
import numpy as np
import torch
from torch import Tensor

from s4d_ray.dynadust3r import MAX_INPUT_SIZE
from s4d_ray.errors import InputError, ResourceLimitError
from s4d_ray.io import fs
from s4d_ray.models.device import autocast, pick_device
from s4d_ray.models.dynadust3r import DynaDUSt3R, load_dust3r

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 40_000_000
"""Default cap on the pixels of an input image or video frame (`s4d predict --max-pixels`),
checked from the file's header before it is decoded: 8192x4096 (a VR180 8K frame) passes; a
261 KB PNG declaring 16384x16384 (2 GB once decoded and converted) does not."""

MAX_IMAGE_BYTES = 512 << 20
"""Cap on the file size of an input image (read whole into memory before decoding)."""

OUTPUT_KEYS = (
    ("pts3d_1", 1, "pts3d"),
    ("conf_1", 1, "conf"),
    ("motion_1", 1, "motion"),
    ("motion_conf_1", 1, "motion_conf"),
    ("pts3d_2", 2, "pts3d_in_other_view"),
    ("conf_2", 2, "conf"),
    ("motion_2", 2, "motion"),
    ("motion_conf_2", 2, "motion_conf"),
)


def images_to_views(
    image1: Tensor | np.ndarray, image2: Tensor | np.ndarray, device: torch.device
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """uint8 images [B,H,W,3] -> the model's views {'img': [B,3,H,W] in [-1,1], 'true_shape'}."""
    views = []
    for image in (image1, image2):
        pixels = torch.as_tensor(image).to(device)
        img = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        shape = torch.tensor([list(img.shape[-2:])] * img.shape[0], device=device)
        views.append({"img": img, "true_shape": shape})
    return views[0], views[1]


@torch.no_grad()
def predict_pairs(
    model: DynaDUSt3R,
    image1: np.ndarray,
    image2: np.ndarray,
    query_times: np.ndarray,
    device: torch.device | None = None,
    precision: str = "bf16",
) -> dict[str, np.ndarray]:
    """Run the model on pairs: image1/image2 uint8 [B,H,W,3], query_times [B] in [0,1].

    Returns float32 arrays: pts3d_1, pts3d_2, motion_1, motion_2 [B,H,W,3] (camera of image 1,
    model units = m for a metric-trained model) and conf_*, motion_conf_* [B,H,W]. On CUDA under
    the autocast of `precision`; fp32 elsewhere.
    """
    device = device or next(model.parameters()).device
    view1, view2 = images_to_views(image1, image2, device)
    times = torch.as_tensor(np.asarray(query_times, np.float32), device=device)
    with autocast(device.type, precision, cuda_only=True):
        res1, res2 = model(view1, view2, times)
    results = {1: res1, 2: res2}
    return {name: results[view][key].float().cpu().numpy() for name, view, key in OUTPUT_KEYS}


def prepare_image(image: np.ndarray, size: int, patch_size: int = 16) -> np.ndarray:
    """RGB uint8 [H,W,3] -> long side `size`, each side centre-cropped to a multiple of the patch."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(patch_size, round(width * scale)), max(patch_size, round(height * scale))
    resized = cv2.resize(
        image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    crop_h, crop_w = new_h - new_h % patch_size, new_w - new_w % patch_size
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    return np.ascontiguousarray(resized[top : top + crop_h, left : left + crop_w])


def check_pixels(uri: str, width: int, height: int, max_pixels: int | None = None) -> None:
    """Refuse an image or frame of `width` x `height` (from its header) above `max_pixels`
    (default MAX_IMAGE_PIXELS, or $S4D_MAX_IMAGE_PIXELS) or without a size, before anything
    of it is decoded."""
    from s4d_ray.limits import env_limit

    limit = (
        env_limit("S4D_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS) if max_pixels is None else max_pixels
    )
    if width <= 0 or height <= 0:
        raise InputError(f"{uri!r}: the image has no size ({width}x{height})")
    if width * height > limit:
        raise ResourceLimitError(
            f"{uri!r}: {width}x{height} = {width * height} pixels, more than the limit of "
            f"{limit} (raise it with --max-pixels or S4D_MAX_IMAGE_PIXELS)"
        )


def image_size(uri: str, data: bytes) -> tuple[int, int]:
    """(width, height) of the image in `data` from its header alone (PIL reads pixels lazily);
    an InputError naming `uri` when no image format is recognised."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as error:
        raise ResourceLimitError(f"{uri!r}: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        what = "an empty file" if not data else f"{type(error).__name__}: {error}"
        raise InputError(f"{uri!r} is not a readable image ({what})") from None


def read_image(uri: str, max_pixels: int | None = None) -> np.ndarray:
    """RGB uint8 [H,W,3] from an image file at any fsspec URI.

    The file must be a regular file (a FIFO or device is refused) of at most MAX_IMAGE_BYTES,
    and its header's size at most `max_pixels` (`check_pixels`); anything that does not decode
    is an InputError naming the file."""
    data = fs.read_bytes(uri, max_bytes=MAX_IMAGE_BYTES)
    width, height = image_size(uri, data)
    check_pixels(uri, width, height, max_pixels)
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as error:
        raise InputError(f"cannot decode image {uri!r}: {str(error).strip()}") from None
    if decoded is None or decoded.shape[:2] != (height, width):
        raise InputError(f"cannot decode image {uri!r} (truncated or unsupported)")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def read_video_pair(
    uri: str, first: int, second: int, max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Frames number `first` and `second` (0-based, decode order) of a video, RGB uint8.

    The input must be a regular file or object (a FIFO or device would block or never end),
    hold a video stream whose frames are at most `max_pixels` (`check_pixels`, from the
    stream header and again per decoded frame), and have both frames; otherwise an InputError
    naming the file."""
    import av

    if min(first, second) < 0:
        raise InputError(f"{uri!r}: frame numbers must be >= 0, got {first}, {second}")
    fs.input_size(uri)
    wanted = {first, second}
    found: dict[int, np.ndarray] = {}
    frames = 0
    filesystem, path = fs.filesystem(uri)
    try:
        with filesystem.open(path, "rb") as f, av.open(f) as container:
            if not container.streams.video:
                raise InputError(f"{uri!r} has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width or height:
                check_pixels(uri, width, height, max_pixels)
            for index, frame in enumerate(container.decode(stream)):
                frames = index + 1
                if index in wanted:
                    check_pixels(uri, frame.width, frame.height, max_pixels)
                    found[index] = frame.to_ndarray(format="rgb24")
                if index >= max(wanted):
                    break
    except InputError:
        raise
    except (av.FFmpegError, ValueError, EOFError) as error:
        raise InputError(f"cannot decode video {uri!r}: {error}") from None
    if wanted - set(found):
        raise InputError(
            f"{uri!r} has {frames} decodable frames: no frame {sorted(wanted - set(found))} "
            "(--pair counts from 0)"
        )
    return found[first], found[second]


def _colorize(values: np.ndarray, valid_max: float | None = None) -> np.ndarray:
    """Scalar map [H,W] -> RGB uint8 (turbo colormap, 0..max or 2nd..98th percentile)."""
    lo = 0.0 if valid_max is not None else float(np.percentile(values, 2))
    hi = valid_max if valid_max is not None else float(np.percentile(values, 98))
    scaled = np.clip((values - lo) / max(hi - lo, 1e-9), 0, 1)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def prediction_picture(image1: np.ndarray, prediction: Mapping[str, np.ndarray]) -> np.ndarray:
    """[H, 3W, 3] uint8: image 1 | depth of view 1 (z) | motion magnitude of view 1."""
    depth = prediction["pts3d_1"][0, ..., 2]
    magnitude = np.linalg.norm(prediction["motion_1"][0], axis=-1)
    motion_max = max(float(np.percentile(magnitude, 99)), 1e-6)
    return np.concatenate([image1, _colorize(depth), _colorize(magnitude, motion_max)], axis=1)


def predict_to_files(
    checkpoint: str,
    image1: np.ndarray,
    image2: np.ndarray,
    query_time: float,
    out_dir: str,
    size: int = 512,
    device: str = "auto",
) -> tuple[str, str]:
    """Predict one pair and write OUT/prediction.npz (no pickle) and OUT/prediction.png."""
    if not 0.0 <= query_time <= 1.0:
        raise InputError(f"query time must be in [0, 1], got {query_time}")
    if not 16 <= size <= MAX_INPUT_SIZE:  # checked before any allocation
        raise InputError(f"input size must be in [16, {MAX_INPUT_SIZE}] px, got {size}")
    torch_device = torch.device(pick_device(device))  # a bad device before the checkpoint
    model = load_dust3r(checkpoint).to(torch_device)
    patch = model.config.patch_size
    first, second = prepare_image(image1, size, patch), prepare_image(image2, size, patch)
    if first.shape != second.shape:
        raise InputError(f"the two images differ in shape: {first.shape} vs {second.shape}")
    prediction = predict_pairs(model, first[None], second[None], np.array([query_time]))
    arrays = {k: v[0] for k, v in prediction.items()}
    arrays.update(image_1=first, image_2=second, query_time=np.float32(query_time))
    npz_uri, png_uri = fs.join(out_dir, "prediction.npz"), fs.join(out_dir, "prediction.png")
    with fs.open_atomic(npz_uri, "wb") as f:
        np.savez_compressed(f, **arrays)
    picture = prediction_picture(first, prediction)
    ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    fs.write_bytes(png_uri, png.tobytes())
    return npz_uri, png_uri
