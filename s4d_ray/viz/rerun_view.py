"""`s4d view`: a Rerun recording (.rrd) of one clip — cameras, 3D tracks, frames, depth over time.

Input: a release-format npz (ours or the official release; any fsspec URI) and, optionally, the
clip's rectified left frames — from the raw VR180 video (`videos`, rectified here), from the
reference's rectified mp4s (`rectified`), or from the engine's dense outputs
(`OUTPUT/dense/<clip_id>/left.mp4` and `depth.npz`, `s4d_ray.io.dense`), found beside
`OUTPUT/npz/<clip_id>.npz` or under `dense` (an engine output root); they come first.

Entities (timeline `frame` = clip frame index, and `time` = seconds since the first frame):
    world                     ViewCoordinates RDF (cameras look down +z, y down), static
    world/trajectory          LineStrips3D: the left camera's path, static
    world/camera              Transform3D: camera2world of the rectified left camera
    world/camera/image        Pinhole (512x512, 60° hfov; drawn as a frustum) + Image (JPEG)
    world/camera/image/tracks Points2D + LineStrips2D: tracks projected into the frame, trails
    world/camera/depth        Points3D: dense depth when present, back-projected in the camera
                              and coloured on the tracks' depth scale
    world/tracks              Points3D: tracks stored at this frame
    world/tracks/trails       LineStrips3D: each track over its last `trail` frames
    notes                     TextDocument: what was shown, what is missing and why

Tracks and the dense depth cloud are coloured by depth in the current camera (the shared log
scale of `s4d_ray.viz.colours`, 1-20 m, near red, far blue; Rerun's own depth colour map is
linear and far-red, so the cloud is logged as coloured points, not a DepthImage) or, with `colour="motion"` and the
`motion` extra present, moving (red) vs static (blue): moving = the optimiser's rule,
p90 of the camera-free 2D motion > 20 px.

Large clips stay responsive by subsampling (documented in `ViewOptions`): at most
`max_tracks` tracks (evenly spaced over the track index, deterministic; only those are
densified, and at most `max_dense_bytes` of them), every `frame_step`-th frame,
JPEG-compressed images, the depth cloud from every `depth_downsample`-th pixel (default 4: 16k
points per 512² frame).
Bad or partial input never stops the recording: zero tracks, an npz without extras or with a
`motion` extra of the wrong shape, or a missing or broken frames source are noted (log +
`notes` entity + `ViewResult.missing`). What cannot be shown at all (timestamps spanning more
than Rerun's nanosecond timeline holds, more tracks than `max_dense_bytes`, `out` a folder) is
an InputError naming the file, raised before anything is written; the .rrd is written under a
temp name and renamed when complete, so a failed run leaves no partial recording.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s4d_ray.errors import InputError, ResourceLimitError, VideoError
from s4d_ray.geometry.camera import (
    RECTIFIED_HFOV_DEG,
    RECTIFIED_SIZE,
    focal_length_px,
    intrinsics,
    project_points,
)
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, read_clip
from s4d_ray.io.ids import UnsafeIdError
from s4d_ray.io.video_lookup import find_raw_video
from s4d_ray.track.moving import moving_by_image_motion
from s4d_ray.viz.colours import MOVING_RGB, STATIC_RGB, depth_colours

log = logging.getLogger("s4d_ray.viz.rerun_view")

APPLICATION_ID = "s4d_ray"
FRAME_TIMELINE = "frame"
TIME_TIMELINE = "time"

MAX_TIMELINE_US = np.iinfo(np.int64).max // 1000
"""The longest clip (last - first timestamp, µs) the `time` timeline holds: Rerun keeps
durations as int64 nanoseconds (~292 years)."""

MAX_VIEW_DENSE_BYTES = 1 << 30
"""Default cap on the dense [shown tracks, T, 3] float64 array of the tracks shown
(`ViewOptions.max_dense_bytes`, or $S4D_MAX_VIEW_DENSE_BYTES; or lower `--max-tracks` to
fit): 1 GiB is 3,000 tracks of ~15,000 frames."""


@dataclass(frozen=True)
class ViewOptions:
    """What goes into the recording, and how large clips are thinned.

    max_tracks: at most this many tracks (evenly spaced over the index; 0 = all).
    frame_step: log every k-th frame. trail: frames of history drawn per track.
    colour: "depth" or "motion". jpeg_quality: of the frames. depth_downsample: factor.
    """

    max_tracks: int = 3000
    frame_step: int = 1
    trail: int = 10
    colour: str = "depth"
    jpeg_quality: int = 85
    depth_downsample: int = 4
    image_plane_m: float = 0.25
    max_dense_bytes: int | None = None

    def __post_init__(self) -> None:
        """Refuse values the recording cannot use (a negative trail, a zero step...)."""
        if self.colour not in ("depth", "motion"):
            raise InputError(f"colour must be 'depth' or 'motion', got {self.colour!r}")
        for name, low in (
            ("max_tracks", 0),
            ("frame_step", 1),
            ("trail", 0),
            ("jpeg_quality", 1),
            ("depth_downsample", 1),
            ("max_dense_bytes", 0),
        ):
            value = getattr(self, name)
            if name == "max_dense_bytes" and value is None:
                continue
            if not isinstance(value, int | np.integer) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.jpeg_quality > 100:
            raise InputError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if not (np.isfinite(self.image_plane_m) and self.image_plane_m > 0):
            raise InputError(f"image_plane_m must be a positive number, got {self.image_plane_m}")


@dataclass
class ViewResult:
    """What a recording holds: frames logged, tracks shown (of total), sources, gaps."""

    path: str
    clip_id: str
    frames_logged: int
    tracks_shown: int
    tracks_total: int
    images_logged: int = 0
    depth_logged: int = 0
    shown: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def load_dense(
    clip: str, clip_id: str, dense: str, notes: list[str]
) -> tuple[Iterator[np.ndarray] | None, np.ndarray | None]:
    """(left frames, depth [T,S,S] m) from a clip's dense outputs (`s4d_ray.io.dense`:
    `<root>/dense/<clip_id>/{left.mp4,depth.npz}`), where `root` is `dense` or else the engine
    output the npz lies in; what is absent or unreadable is noted."""
    from s4d_ray.io.dense import DENSE_DIR, DenseOutputError, output_root_of_npz, read_dense

    root = dense or output_root_of_npz(clip)
    folder = fs.join(root, DENSE_DIR, clip_id)
    if not fs.exists(folder):
        if dense:
            notes.append(f"dense: no dense outputs for {clip_id} under {folder}")
        return None, None
    parts: dict[str, Any] = {}
    for part in ("left", "depth"):
        try:
            parts.update(read_dense(root, clip_id, parts=(part,)))
        except DenseOutputError as error:
            notes.append(f"dense {part}: {error}")
    left = parts.get("left")
    return (iter(left) if left is not None else None), parts.get("depth")


def select_tracks(num_tracks: int, max_tracks: int) -> np.ndarray:
    """Indices of at most `max_tracks` of `num_tracks`, evenly spaced (all when 0 or fewer)."""
    if max_tracks <= 0 or num_tracks <= max_tracks:
        return np.arange(num_tracks)
    return np.unique(np.linspace(0, num_tracks - 1, max_tracks).round().astype(np.int64))


def check_timeline(record: ClipRecord, source: str) -> None:
    """Refuse a clip whose timestamps span more than the `time` timeline holds
    (MAX_TIMELINE_US); `source` (the npz) is named in the InputError."""
    stamps = record.timestamps
    span = int(stamps[-1]) - int(stamps[0]) if len(stamps) else 0
    if span > MAX_TIMELINE_US or span < 0:
        raise InputError(
            f"{source!r}: timestamps span {span} µs, outside [0, {MAX_TIMELINE_US}] µs "
            "(the ~292 years of Rerun's int64-nanosecond time timeline)"
        )


def check_dense_size(record: ClipRecord, shown: int, max_bytes: int | None, source: str) -> None:
    """Refuse showing `shown` tracks when their dense [shown,T,3] float64 array is over
    `max_bytes` (None: MAX_VIEW_DENSE_BYTES or $S4D_MAX_VIEW_DENSE_BYTES), naming `source`
    and how to fit."""
    from s4d_ray.limits import env_limit

    if max_bytes is None:
        max_bytes = env_limit("S4D_MAX_VIEW_DENSE_BYTES", MAX_VIEW_DENSE_BYTES)
    nbytes = shown * record.num_frames * 3 * 8
    if nbytes > max_bytes:
        raise ResourceLimitError(
            f"{source!r}: showing {shown} tracks x {record.num_frames} frames needs {nbytes} "
            f"bytes, more than the limit of {max_bytes} (lower --max-tracks, or raise "
            "S4D_MAX_VIEW_DENSE_BYTES)"
        )


def dense_tracks_of(record: ClipRecord, chosen: np.ndarray) -> np.ndarray:
    """The NaN-filled [len(chosen),T,3] float64 tracks of the tracks `chosen` (sorted indices),
    gathered from the sparse fields without densifying the others: the memory is that of
    the tracks shown, not of the clip."""
    record._check_tracks()  # lengths, indices and coordinates consistent: no overrun below
    lengths = np.asarray(record.track_lengths, np.int64)
    ends = np.cumsum(lengths)
    picked = lengths[chosen]
    starts = ends[chosen] - picked
    total = int(picked.sum())
    # point p of the k-th chosen track sits at starts[k] + (p - first point of k)
    offsets = np.cumsum(picked) - picked
    members = np.repeat(starts - offsets, picked) + np.arange(total)
    dense = np.full((len(chosen), record.num_frames, 3), np.nan)
    rows = np.repeat(np.arange(len(chosen)), picked)
    frames = np.asarray(record.track_indices)[members]
    dense[rows, frames] = np.asarray(record.track_coordinates)[members]
    return dense


def _motion_of(record: ClipRecord, chosen: np.ndarray, missing: list[str]) -> np.ndarray | None:
    """The `motion` extra [N,T] px of the tracks `chosen`, or None with a note when it is
    absent or not a numeric [N,T] array."""
    if "motion" not in record.extras:
        missing.append("motion: no `motion` extra (release npz?); coloured by depth")
        return None
    motion = np.asarray(record.extras["motion"])
    want = (record.num_tracks, record.num_frames)
    if motion.shape != want or motion.dtype.kind not in "fiub":
        missing.append(
            f"motion: the `motion` extra is {motion.dtype}{list(motion.shape)}, expected a "
            f"number per track and frame {list(want)}; coloured by depth"
        )
        return None
    return motion[chosen].astype(np.float32)


def _frames_source(
    record: ClipRecord, videos: str, rectified: str, missing: list[str]
) -> tuple[str, Iterator[np.ndarray] | None]:
    """(description, iterator of left frames [S,S,3]) or (why not, None)."""
    from s4d_ray.io.rectify import find_rectified_videos, iter_rectified
    from s4d_ray.io.video import decode_first_frames

    if rectified:
        left_uri, _ = find_rectified_videos(rectified, record.name)
        if not fs.exists(left_uri):
            missing.append(f"frames: no rectified video {left_uri} (showing cameras and tracks)")
            return "", None
        return f"rectified video {left_uri}", iter(
            decode_first_frames(left_uri, record.num_frames, record.name, "view")
        )
    if videos:
        try:
            video = find_raw_video(videos, record, "view")
        except (VideoError, UnsafeIdError) as error:
            reason = getattr(error, "message", str(error))
            missing.append(f"frames: {reason} (showing cameras and tracks)")
            return "", None
        return f"raw VR180 video {video.uri} ({video.format.describe()}), rectified here", (
            left for left, _ in iter_rectified(record, video)
        )
    missing.append("frames: none given and no dense outputs (--videos, --rectified, --dense)")
    return "", None


def _fill_gaps(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """`values [n,L,d]` with each row's not-`ok` entries replaced by the nearest earlier ok
    entry (or, before the first, the first ok one): a strip over a gap joins its ends."""
    steps = np.arange(ok.shape[1])
    last = np.maximum.accumulate(np.where(ok, steps, -1), axis=1)
    last = np.where(last < 0, np.argmax(ok, axis=1)[:, None], last)
    return np.take_along_axis(values, last[..., None], axis=1)


def _trails(
    history: np.ndarray, colours: np.ndarray, world2camera: np.ndarray, k: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Trails of `history [n,L,3]` (NaN where not stored): ((3D strips [m,L,3], colours),
    (strips projected into the current camera [m',L,2], colours)). Gaps are bridged (a strip
    joins the stored points around a gap) so every strip has L points and Rerun converts them
    as one array: per-strip lists cost ~0.3 s per frame at 3,000 tracks."""
    finite = np.isfinite(history[..., 0])
    keep = finite.sum(axis=1) >= 2
    strips = _fill_gaps(history[keep], finite[keep])
    px, z = project_points(history, world2camera, k)
    seen = finite & (z > 0.01)
    keep_2d = seen.sum(axis=1) >= 2
    strips_2d = _fill_gaps(px[keep_2d], seen[keep_2d])
    return (strips, colours[keep]), (strips_2d, colours[keep_2d])


def _blueprint():
    import rerun.blueprint as rrb

    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Spatial3DView(origin="world", name="3D: cameras and tracks"),
            rrb.Vertical(
                rrb.Spatial2DView(origin="world/camera/image", name="left frame + tracks"),
                rrb.TextDocumentView(origin="notes", name="notes"),
                row_shares=[3, 1],
            ),
            column_shares=[3, 2],
        ),
        collapse_panels=True,
    )


def _notes_markdown(record: ClipRecord, result: ViewResult, metadata: dict) -> str:
    lines = [f"# clip `{record.name}`", ""]
    lines += [f"- {item}" for item in result.shown]
    if result.missing:
        lines += ["", "## missing", ""] + [f"- {item}" for item in result.missing]
    if metadata:
        lines += ["", "## metadata", "", "```", json.dumps(metadata, indent=1)[:3000], "```"]
    return "\n".join(lines)


def depth_cloud(depth: np.ndarray, k: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Every `step`-th pixel of `depth [H,W] m` (0 or NaN = invalid) back-projected into the
    camera (OpenCV axes; `k [3,3]` the intrinsics of a RECTIFIED_SIZE² frame, scaled to the
    map's size): points [M,3] m and their colours [M,3] uint8 on the shared depth scale."""
    height, width = depth.shape
    scale = width / RECTIFIED_SIZE
    rows, cols = np.mgrid[0:height:step, 0:width:step]
    z = depth[::step, ::step]
    ok = np.isfinite(z) & (z > 0)
    z = z[ok]
    x = (cols[ok] - k[0, 2] * scale) / (k[0, 0] * scale) * z
    y = (rows[ok] - k[1, 2] * scale) / (k[1, 1] * scale) * z
    points = np.stack([x, y, z], axis=1).astype(np.float32)
    return points, depth_colours(z)


def log_clip(
    rec,
    record: ClipRecord,
    options: ViewOptions = ViewOptions(),
    frames: Iterator[np.ndarray] | None = None,
    depth: np.ndarray | None = None,
    result: ViewResult | None = None,
) -> ViewResult:
    """Log one clip into the Rerun recording stream `rec`.

    Args:
        record: the clip (release fields, extras optional).
        frames: iterator of the left rectified frames [S,S,3] uint8, one per clip frame
            (None: no images); a source that fails part-way is noted and dropped.
        depth: [T,H,W] m (0 or NaN = invalid), optional.
        result: a partly filled result (sources, gaps) to complete.
    """
    import rerun as rr

    result = result or ViewResult("", record.name, 0, 0, record.num_tracks)
    k = intrinsics(RECTIFIED_SIZE, RECTIFIED_SIZE, RECTIFIED_HFOV_DEG)
    c2w = np.asarray(record.camera2world, np.float64)
    w2c = record.world2camera().astype(np.float64)
    metadata = {}
    if "metadata" in record.extras:
        try:
            metadata = json.loads(str(record.extras["metadata"]))
        except ValueError:
            result.missing.append("metadata: extra is not JSON")

    rr.log("world", rr.ViewCoordinates.RDF, static=True, recording=rec)
    rr.log(
        "world/trajectory",
        rr.LineStrips3D([c2w[:, :, 3]], colors=[(255, 255, 255)], radii=0.005),
        static=True,
        recording=rec,
    )
    rr.log(
        "world/camera/image",
        rr.Pinhole(
            focal_length=float(k[0, 0]),
            principal_point=[float(k[0, 2]), float(k[1, 2])],
            resolution=[RECTIFIED_SIZE, RECTIFIED_SIZE],
            image_plane_distance=options.image_plane_m,
        ),
        static=True,
        recording=rec,
    )
    result.shown.append(
        f"{record.num_frames} cameras (rectified left eye, {RECTIFIED_SIZE} px, "
        f"{RECTIFIED_HFOV_DEG:.0f}° hfov, f = {focal_length_px(RECTIFIED_SIZE, RECTIFIED_HFOV_DEG):.1f} px) "
        "and their trajectory"
    )

    check_timeline(record, record.name)
    chosen = select_tracks(record.num_tracks, options.max_tracks)
    check_dense_size(record, len(chosen), options.max_dense_bytes, record.name)
    dense = dense_tracks_of(record, chosen)
    stored = np.isfinite(dense[..., 0])
    result.tracks_shown = len(chosen)
    moving = None
    if record.num_tracks == 0:
        result.missing.append("tracks: the clip has zero tracks")
    elif options.colour == "motion":
        motion = _motion_of(record, chosen, result.missing)
        if motion is not None:
            moving = moving_by_image_motion(motion, stored)
    if record.num_tracks:
        how = (
            f"moving (red, {int(moving.sum())}) / static (blue)"
            if moving is not None
            else "depth in the current camera (log scale 1-20 m, near red, far blue)"
        )
        thinned = " (evenly thinned: --max-tracks)" if len(chosen) < record.num_tracks else ""
        result.shown.append(
            f"{len(chosen)} of {record.num_tracks} tracks{thinned}, trails of {options.trail} "
            f"frames, coloured by {how}"
        )
    extras = sorted(record.extras)
    if not extras:
        result.missing.append("extras: none (a release npz): no visibility, colours, motion")

    step = max(1, options.frame_step)
    ds = max(1, options.depth_downsample)
    first_us = int(record.timestamps[0])
    for t in range(record.num_frames):
        frame = None
        if frames is not None:
            try:
                frame = next(frames)
            except StopIteration:
                result.missing.append(f"frames: the source ended at frame {t}")
                frames = None
            except Exception as error:  # a broken video must not lose the rest of the view
                result.missing.append(f"frames: decoding failed at frame {t}: {error}")
                frames = None
        if t % step:
            continue
        rr.set_time(FRAME_TIMELINE, sequence=t, recording=rec)
        since = np.timedelta64(int(record.timestamps[t]) - first_us, "us")  # exact, checked
        rr.set_time(TIME_TIMELINE, duration=since, recording=rec)
        rr.log(
            "world/camera",
            rr.Transform3D(translation=c2w[t, :, 3], mat3x3=c2w[t, :, :3]),
            recording=rec,
        )
        result.frames_logged += 1
        if frame is not None:
            rr.log(
                "world/camera/image",
                rr.Image(frame, color_model="RGB").compress(jpeg_quality=options.jpeg_quality),
                recording=rec,
            )
            result.images_logged += 1
        if depth is not None and t < len(depth):
            cloud, cloud_colours = depth_cloud(np.asarray(depth[t], np.float32), k, ds)
            rr.log(
                "world/camera/depth",
                rr.Points3D(cloud, colors=cloud_colours, radii=0.01),
                recording=rec,
            )
            result.depth_logged += 1
        if not len(chosen):
            continue
        here = stored[:, t]
        if not here.any():
            rr.log("world/tracks", rr.Clear(recursive=True), recording=rec)
            rr.log("world/camera/image/tracks", rr.Clear(recursive=True), recording=rec)
            continue
        points = dense[here, t]
        px, z = project_points(points, w2c[t], k)
        if moving is not None:
            colours = np.where(moving[here, None], MOVING_RGB, STATIC_RGB).astype(np.uint8)
        else:
            colours = depth_colours(z)
        rr.log("world/tracks", rr.Points3D(points, colors=colours, radii=0.02), recording=rec)
        lo = max(0, t - options.trail)
        (strips, strip_colours), (strips_2d, colours_2d) = _trails(
            dense[here, lo : t + 1], colours, w2c[t], k
        )
        rr.log(
            "world/tracks/trails",
            rr.LineStrips3D(strips, colors=strip_colours, radii=0.006),
            recording=rec,
        )
        inside = (z > 0.01) & np.all((px >= 0) & (px < RECTIFIED_SIZE), axis=1)
        rr.log(
            "world/camera/image/tracks",
            rr.Points2D(px[inside], colors=colours[inside], radii=2.0),
            recording=rec,
        )
        rr.log(
            "world/camera/image/tracks/trails",
            rr.LineStrips2D(strips_2d, colors=colours_2d, radii=0.75),
            recording=rec,
        )
    if step > 1:
        result.shown.append(
            f"frame step {step}: {result.frames_logged} of {record.num_frames} frames"
        )
    if result.images_logged:
        result.shown.append(
            f"{result.images_logged} left rectified frames (JPEG) with projected tracks"
        )
    if result.depth_logged:
        result.shown.append(
            f"{result.depth_logged} dense depth clouds (every {options.depth_downsample}th pixel, "
            "coloured like the tracks)"
        )
    elif depth is None:
        result.missing.append("depth: no dense depth for this clip")
    rr.log(
        "notes",
        rr.TextDocument(_notes_markdown(record, result, metadata), media_type="text/markdown"),
        static=True,
        recording=rec,
    )
    return result


def write_recording(
    clip: str,
    out: str,
    videos: str = "",
    rectified: str = "",
    dense: str = "",
    options: ViewOptions = ViewOptions(),
) -> ViewResult:
    """Write the Rerun recording of the clip npz at `clip` (any URI) to `out` (.rrd, any URI).

    Frames come from the dense outputs when they exist (beside the npz, or under the output
    root `dense`), else `rectified`, else `videos`; each missing piece is logged as a warning
    and listed in `ViewResult.missing` and the `notes`. A clip that cannot be shown, or `out`
    a folder, is an InputError naming it before anything is written; the recording goes to a
    temp file renamed to `out` when complete (uploaded in one piece for object stores).
    """
    import rerun as rr

    local = fs.is_local(out)
    out_path = fs.filesystem(out)[1] if local else out
    if local and os.path.isdir(out_path):
        raise InputError(f"--out {out!r} is a folder; give the path of the .rrd file to write")
    record = read_clip(clip)
    check_timeline(record, clip)
    shown = len(select_tracks(record.num_tracks, options.max_tracks))
    check_dense_size(record, shown, options.max_dense_bytes, clip)
    result = ViewResult("", record.name, 0, 0, record.num_tracks)
    result.shown.append(f"npz {clip}")
    frames_iter, depth = load_dense(clip, record.name, dense, result.missing)
    if frames_iter is not None:
        result.shown.append("frames from the dense outputs (left.mp4)")
    else:
        try:
            source, frames_iter = _frames_source(record, videos, rectified, result.missing)
        except Exception as error:  # unreadable video: still show cameras and tracks
            source, frames_iter = "", None
            result.missing.append(f"frames: {error}")
        if source:
            result.shown.append(f"frames from {source}")

    if local:
        parent = os.path.dirname(os.path.abspath(out_path))
        os.makedirs(parent, exist_ok=True)
        target = os.path.join(parent, fs.temp_name(out_path))
    else:
        handle, target = tempfile.mkstemp(suffix=".rrd")
        os.close(handle)
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=record.name)
    try:
        rec.save(target, default_blueprint=_blueprint())
        try:
            log_clip(rec, record, options, frames_iter, depth, result)
        finally:
            rec.flush()
            rec.disconnect()
        if local:
            os.replace(target, out_path)
        else:
            with open(target, "rb") as f:
                fs.write_bytes(out, f.read())
    finally:
        if os.path.exists(target):
            os.unlink(target)
    result.path = out
    for item in result.missing:
        log.warning("clip %s: %s", record.name, item)
    return result


def open_viewer(path: str, web: bool = False, serve: bool = False, port: int = 9090) -> int:
    """Open a recording with the `rerun` executable installed with rerun-sdk (blocks until it
    exits): the native viewer; with `web`, the web viewer in a browser; with `serve`, only
    serve the web viewer and the recording on http://<host>:<port> (headless machines).
    Returns rerun's exit status."""
    import shutil
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "rerun")
    exe = exe if os.path.exists(exe) else shutil.which("rerun") or "rerun"
    args = [exe, path]
    if serve:
        args += ["--serve-web", "--web-viewer-port", str(port)]
        print(f"serving the web viewer on http://localhost:{port} (Ctrl-C stops)", flush=True)
    elif web:
        args += ["--web-viewer", "--web-viewer-port", str(port)]
    return subprocess.call(args)
