"""Dense outputs and pointmap export, measured on synthetic clips (CPU backends).

* encodings: bytes per frame, encode time and added error of candidate encodings for the
  rectified frames (lossy / lossless video) and the stereo depth (float16 + deflate,
  quantised inverse depth as uint16 PNG, float16 bits as PNG) on one clip's engine arrays;
* dense outputs' cost: the engine in one process on K clips with and without `--dense`:
  writer seconds per clip, encode seconds per clip, bytes per clip;
* export: `export_pointmaps` on a local Ray cluster: windows/s and bytes/window, at 512 and
  256 px.

  python -m benchmarks.bench_pointmaps [--clips 2] [--frames 24]
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import tempfile
import time
import warnings
import zlib
from fractions import Fraction

import av
import cv2
import numpy as np

from s4d_ray.engine.clip_stages import decode_and_rectify, input_rows, stereo_depth
from s4d_ray.engine.config import PipelineConfig
from s4d_ray.engine.runner import run_in_process
from s4d_ray.engine.stage_list import Job, setup_model
from s4d_ray.geometry.rectify import LowResolutionWarning
from s4d_ray.io.clip_io import read_clip
from s4d_ray.io.dense import decode_depth, encode_depth
from s4d_ray.io.writer import read_json_extra
from s4d_ray.synthetic.synth import SynthConfig, synth_dataset


def _video(frames: np.ndarray, codec: str, pix_fmt: str, options: dict, fmt: str) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(30))
        stream.pix_fmt, stream.options = pix_fmt, options
        stream.height, stream.width = frames.shape[1:3]
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def encoding_table(left: np.ndarray, depth: np.ndarray) -> list[dict]:
    """Candidate encodings of one clip's frames [T,S,S,3] and depth [T,S,S] (0 = invalid)."""
    rows, frames = [], len(left)
    videos = [
        ("h264 crf18 veryfast yuv420 (chosen)", "libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}, "mp4"),
        ("h264 crf18 medium yuv420", "libx264", "yuv420p", {"crf": "18"}, "mp4"),
        ("h264rgb lossless", "libx264rgb", "rgb24", {"crf": "0", "preset": "veryfast"}, "mp4"),
        ("ffv1 lossless", "ffv1", "bgr0", {}, "matroska"),
    ]  # fmt: skip
    for name, codec, pix, options, fmt in videos:
        start = time.perf_counter()
        data = _video(left, codec, pix, options, fmt)
        seconds = time.perf_counter() - start
        error = np.mean((_decode(data).astype(float) - left) ** 2)
        psnr = float("inf") if error == 0 else 10 * np.log10(255**2 / error)
        rows.append({"what": f"frames: {name}", "kB_per_frame": len(data) / frames / 1e3,
                     "encode_ms_per_frame": 1e3 * seconds / frames, "psnr_db": psnr})  # fmt: skip
    valid = depth > 0

    def depth_row(name: str, data_bytes: int, seconds: float, decoded: np.ndarray) -> dict:
        rel = np.abs(decoded[valid] - depth[valid]) / depth[valid]
        return {"what": f"depth: {name}", "kB_per_frame": data_bytes / frames / 1e3,
                "encode_ms_per_frame": 1e3 * seconds / frames,
                "rel_error_median": float(np.median(rel)), "rel_error_max": float(rel.max())}  # fmt: skip

    start = time.perf_counter()
    data = encode_depth(depth)
    rows.append(
        depth_row(
            "float16 + deflate npz (chosen)",
            len(data),
            time.perf_counter() - start,
            decode_depth(data),
        )
    )
    start = time.perf_counter()
    data = zlib.compress(depth.astype(np.float16).tobytes(), 1)
    rows.append(
        depth_row(
            "float16 + deflate level 1",
            len(data),
            time.perf_counter() - start,
            depth.astype(np.float16).astype(np.float32),
        )
    )
    for near in (0.25, 1.0):
        scale = 65535 * near
        start = time.perf_counter()
        q = np.where(valid, np.clip(np.round(scale / np.maximum(depth, 1e-6)), 1, 65535), 0).astype(
            np.uint16
        )
        size = sum(len(cv2.imencode(".png", x)[1]) for x in q)
        back = np.where(q > 0, scale / np.maximum(q, 1), 0)
        rows.append(
            depth_row(
                f"inverse depth uint16 PNG (nearest {near} m)",
                size,
                time.perf_counter() - start,
                back,
            )
        )
    start = time.perf_counter()
    size = sum(len(cv2.imencode(".png", d.astype(np.float16).view(np.uint16))[1]) for d in depth)
    rows.append(depth_row("float16 bits as uint16 PNG", size, time.perf_counter() - start, depth.astype(np.float16).astype(np.float32)))  # fmt: skip
    return rows


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args()
    warnings.simplefilter("ignore", LowResolutionWarning)
    import ray

    from s4d_ray.pointmaps.export import ExportConfig, export_pointmaps

    with tempfile.TemporaryDirectory() as root:
        data = os.path.join(root, "data")
        synth_dataset(data, SynthConfig(clips=args.clips, frames=args.frames, seed=3))
        npz, raw = os.path.join(data, "npz"), os.path.join(data, "raw")
        rows, _ = input_rows(npz, raw)

        row = decode_and_rectify(dict(rows[0]))
        row = stereo_depth(row, setup_model("stereo", Job(PipelineConfig(), root)))
        table = encoding_table(row["left"], row["depth"])
        valid = 100 * (row["depth"] > 0).mean()
        print(f"encodings (one clip, {len(row['left'])} frames, valid depth {valid:.0f} %):")
        for entry in table:
            print(
                "  "
                + json.dumps(
                    {k: round(v, 5) if isinstance(v, float) else v for k, v in entry.items()}
                )
            )

        run_in_process(rows[:1], PipelineConfig(min_tracks=0), os.path.join(root, "warmup"))
        cost = {}
        for dense in (False, True):
            out = os.path.join(root, f"engine_dense{int(dense)}")
            start = time.perf_counter()
            summaries = run_in_process(rows, PipelineConfig(dense=dense, min_tracks=0), out)
            wall = time.perf_counter() - start
            timings = [json.loads(s["timings"]) for s in summaries if s["status"] == "done"]
            n = max(len(timings), 1)
            cost["dense" if dense else "plain"] = {
                "clips": len(timings),
                "wall_s_per_clip": wall / n,
                "write_s_per_clip": sum(t.get("write", 0) for t in timings) / n,
                "dense_encode_s_per_clip": sum(
                    read_json_extra(read_clip(u), "metadata").get("dense_encode_s", 0)
                    for u in glob.glob(os.path.join(out, "npz", "*.npz"))
                )
                / n,
                "npz_bytes_per_clip": folder_bytes(os.path.join(out, "npz")) / n,
                "dense_bytes_per_clip": folder_bytes(os.path.join(out, "dense")) / n
                if dense
                else 0,
            }
        print(f"dense outputs' cost (per clip, {args.frames} frames):")
        print(json.dumps(cost, indent=2))

        ray.init(num_cpus=max(os.cpu_count() or 1, 4), include_dashboard=False)
        engine = os.path.join(root, "engine_dense1")
        for size in (512, 256):
            config = ExportConfig(frames=17, stride=4, size=size, min_valid=0.0)
            summary = export_pointmaps(engine, os.path.join(root, f"export{size}"), config)
            # a second export of the same clips on the warm cluster: the Ray start-up excluded
            start = time.perf_counter()
            again = export_pointmaps(engine, os.path.join(root, f"export{size}b"), config)
            wall = time.perf_counter() - start
            print(json.dumps({
                "size": size, "windows": again.windows_exported,
                "windows_per_s_warm": round(again.windows_exported / wall, 3),
                "windows_per_s_first_run": summary.windows_per_second,
                "bytes_per_window": again.bytes_per_window,
                "pose_ate_m_max": again.quality.get("pose_ate_m", {}).get("max"),
            }))  # fmt: skip
        ray.shutdown()


if __name__ == "__main__":
    main()
