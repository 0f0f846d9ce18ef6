"""Preview pictures of a clip's 3D tracks: a rectified frame with the tracks projected and
coloured by depth on the shared log scale (`s4d_ray.viz.colours`), a depth colour bar and a
metric scale bar (what `make demo` saves as OUTPUT/preview_<clip>.png)."""

from __future__ import annotations

import io
import itertools

import cv2
import numpy as np

from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, intrinsics, project_points
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, read_clip
from s4d_ray.io.rectify import iter_rectified
from s4d_ray.io.video_lookup import find_raw_video
from s4d_ray.viz.colours import DEPTH_COLORMAP, DEPTH_TICKS_M, depth_colours, depth_norm


def draw_tracks(image: np.ndarray, record: ClipRecord, frame: int, trail: int = 8) -> np.ndarray:
    """`image [S,S,3]` with the clip's 3D tracks projected at `frame`, coloured by depth on the
    shared log scale (`s4d_ray.viz.colours`: 1-20 m, near red, far blue), each with a trail
    over its previous `trail` frames."""
    out = image.copy()
    dense = record.dense_tracks()
    w2c = record.world2camera()[frame]
    k = intrinsics(image.shape[1], image.shape[0], RECTIFIED_HFOV_DEG)
    here = np.isfinite(dense[:, frame, 0])
    px, z = project_points(dense[here, frame], w2c, k)
    colours = depth_colours(z)
    history = dense[here, max(0, frame - trail) : frame + 1]
    for points, colour in zip(history, colours, strict=True):
        ok = np.isfinite(points[:, 0])
        if ok.sum() >= 2:
            trail_px, _ = project_points(points[ok], w2c, k)
            cv2.polylines(
                out,
                [trail_px.astype(np.int32)],
                False,
                tuple(int(c) for c in colour),
                1,
                cv2.LINE_AA,
            )
    for (x, y), colour in zip(px, colours, strict=True):
        cv2.circle(out, (int(x), int(y)), 2, tuple(int(c) for c in colour), -1, cv2.LINE_AA)
    return out


def preview_png(left: np.ndarray, record: ClipRecord, frame: int) -> bytes:
    """The preview picture (PNG bytes): the frame, the frame with tracks, a depth colour bar
    (m, log scale) and a 1 m scale bar at 2 m and 5 m depth in the image."""
    from matplotlib import patheffects
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.5, 5.4))
    ax_frame, ax_tracks = fig.subplots(1, 2)
    ax_frame.imshow(left)
    ax_frame.set_title(f"{record.name}: rectified left frame {frame}", fontsize=9)
    ax_tracks.imshow(draw_tracks(left, record, frame))
    shown = int(np.isfinite(record.dense_tracks()[:, frame, 0]).sum())
    ax_tracks.set_title(f"{shown} 3D tracks at this frame, trails of 8 frames", fontsize=9)
    focal = intrinsics(left.shape[1], left.shape[0], RECTIFIED_HFOV_DEG)[0, 0]
    for ax in (ax_frame, ax_tracks):
        ax.set_xticks([])
        ax.set_yticks([])
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for row, depth_m in enumerate((2.0, 5.0)):  # how long 1 m looks at that depth
        length = focal / depth_m
        y = left.shape[0] - 14 - 20 * row
        ax_tracks.plot([10, 10 + length], [y, y], color="white", lw=2.5, path_effects=outline)
        ax_tracks.text(
            14 + length,
            y,
            f"1 m at {depth_m:g} m depth",
            color="white",
            fontsize=8,
            va="center",
            path_effects=outline,
        )
    bar = fig.colorbar(
        ScalarMappable(norm=depth_norm(), cmap=DEPTH_COLORMAP),
        ax=[ax_frame, ax_tracks],
        fraction=0.025,
        pad=0.01,
    )
    bar.set_ticks(list(DEPTH_TICKS_M), labels=[f"{t:g}" for t in DEPTH_TICKS_M])
    bar.set_label("depth in this camera (m, log scale)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def save_picture(data: str, output: str, clip_id: str) -> str:
    """`<output>/preview_<clip>.png`: the rectified left frame mid-clip with the 3D tracks
    (`data`: the source dataset with npz/ and raw/; `output`: the engine's output root)."""
    record = read_clip(fs.join(output, "npz", f"{clip_id}.npz"))
    source = read_clip(fs.join(data, "npz", f"{clip_id}.npz"))
    frame = record.num_frames // 2
    rectified = iter_rectified(source, find_raw_video(fs.join(data, "raw"), source, "demo"))
    left, _ = next(itertools.islice(rectified, frame, None))  # decodes no further than `frame`
    path = fs.join(output, f"preview_{clip_id}.png")
    fs.write_bytes(path, preview_png(left, record, frame))
    return path
