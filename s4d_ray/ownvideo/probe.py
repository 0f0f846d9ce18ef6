"""`s4d probe`: what a raw video is and how it will be read, before anything is decoded in full.

Headers first (container, codec, bit depth, frame rate and whether it varies, duration, display
rotation, the spherical metadata of `io.spherical`, the sidecar), then a few frames from the
first seconds for the content checks:
- the two halves of a stereo frame show one scene from 6 cm apart, so they correlate strongly
  once blurred to a coarse grid; a mono frame's halves (two different directions) do not. The
  left/right and top/bottom halves are both scored, so a top-bottom video declared or taken as
  side-by-side is named as such, and a mono video (the common yt-dlp mistake) is refused here;
- a fisheye eye is a bright disc on black: found from the black border, which gives the
  circle's centre and radius when the projection is declared fisheye without them, and refuses
  a fisheye that nothing declares (its field of view cannot be guessed).
The verdict is a `StereoFormat` with the source of each field (sidecar > metadata > content >
default) or the reason the file is refused (`ProbeError`, stage `probe`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np

from s4d_ray.errors import StageError, VideoError
from s4d_ray.geometry.vr180 import eye_box
from s4d_ray.io import fs
from s4d_ray.io.spherical import SphericalMetadataError, read_spherical_metadata
from s4d_ray.io.stereo_format import (
    StereoFormat,
    StereoFormatError,
    metadata_values,
    read_sidecar,
    resolve_format,
    sidecar_uri,
)
from s4d_ray.io.video import open_video_stream

STAGE = "probe"
CONTENT_SECONDS = 2.0
"""Content checks look at the first seconds only (a few frames of them)."""
CONTENT_FRAMES = 6
MATCH_SIZE = 96
"""Halves are compared on a MATCH_SIZE² grid, blurred: stereo disparity (a few degrees) is
under a cell, different content is not."""
MIN_HALF_CORRELATION = 0.6
"""Below this the two halves are not two views of one scene."""
MIN_TEXTURE = 1.0
"""Grey-level spread (on the coarse grid) below which a picture is blank."""
DARK = 12
"""Grey level under which a pixel is the black outside a fisheye's circle."""


class ProbeError(StageError):
    """A video refused before decoding: not stereo, or packed in a way that is not understood."""


@dataclass
class ProbeReport:
    """What `s4d probe` found in one file; `format` is None when the file is refused."""

    uri: str
    container: str = ""
    codec: str = ""
    bit_depth: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    variable_fps: bool = False
    duration_s: float | None = None
    rotation_deg: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, Any] | None = None
    content: dict[str, Any] = field(default_factory=dict)
    format: StereoFormat | None = None
    refused: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON for scripts (`s4d probe --json`)."""
        out = {k: v for k, v in self.__dict__.items() if k != "format"}
        out["format"] = None if self.format is None else self.format.to_json_dict()
        return out

    def table(self) -> str:
        """Aligned lines for people."""
        fps = f"{self.fps:.3f}" + (" (variable)" if self.variable_fps else "")
        duration = "unknown" if self.duration_s is None else f"{self.duration_s:.2f} s"
        spherical = self.metadata or {}
        rows = [
            ("file", self.uri),
            ("container / codec", f"{self.container} / {self.codec}, {self.bit_depth}-bit"),
            ("frame", f"{self.width}×{self.height} px, {fps} fps, {duration}"),
            ("rotation", f"{self.rotation_deg:g}°"),
            (
                "metadata",
                ", ".join(f"{k}={v}" for k, v in spherical.items() if v not in (None, [], ()))
                or "none",
            ),
            ("sidecar", "none" if self.sidecar is None else json.dumps(self.sidecar)),
            ("content", ", ".join(f"{k}={v}" for k, v in self.content.items()) or "not checked"),
        ]
        if self.format is not None:
            sources = ", ".join(f"{k} from {v}" for k, v in self.format.sources.items())
            rows += [("verdict", f"use: {self.format.describe()}"), ("sources", sources)]
        else:
            rows.append(("verdict", f"refused: {self.refused}"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _header_facts(report: ProbeReport, label: str) -> None:
    """Container, codec, bit depth, rate, duration from the stream header (nothing decoded)."""
    with open_video_stream(report.uri, label, STAGE) as (container, stream):
        report.container = container.format.name
        report.codec = stream.codec_context.name
        descriptor = av.VideoFormat(stream.codec_context.pix_fmt or "yuv420p")
        report.bit_depth = max((c.bits for c in descriptor.components), default=8)
        report.width, report.height = stream.width, stream.height
        average = Fraction(stream.average_rate or 0)
        base = Fraction(stream.base_rate or stream.guessed_rate or 0)
        report.fps = float(average or base)
        report.variable_fps = bool(average and base and abs(average - base) > 0.01 * base)
        if stream.duration is not None and stream.time_base is not None:
            report.duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            report.duration_s = container.duration / 1e6


def first_frames(
    uri: str, label: str, seconds: float = CONTENT_SECONDS, count: int = CONTENT_FRAMES
) -> tuple[list[np.ndarray], float]:
    """Up to `count` RGB frames [H,W,3] spread over the first `seconds` of the video (decoded
    in order, nothing after), and the display rotation (deg) the frames ask for."""
    picked: list[np.ndarray] = []
    rotation = 0.0
    with open_video_stream(uri, label, STAGE) as (container, stream):
        base = stream.time_base
        step = seconds / count
        next_time = 0.0
        first = None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                time = float(frame.pts * base)
                first = time if first is None else first
                rotation = float(frame.rotation or 0.0)
                if time - first > seconds or len(picked) >= count:
                    break
                if time - first >= next_time:
                    picked.append(frame.to_ndarray(format="rgb24"))
                    next_time += step
        except av.FFmpegError as e:
            raise VideoError(label, STAGE, f"corrupt video {uri!r}: {e}") from e
    return picked, rotation


def _coarse(image: np.ndarray) -> np.ndarray:
    """Grey, MATCH_SIZE², blurred, each row's and column's mean removed: what is left is
    texture, not the sky-above-ground structure every picture of the world shares."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    small = cv2.resize(grey, (MATCH_SIZE, MATCH_SIZE), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.5)
    small -= small.mean(axis=1, keepdims=True)
    return small - small.mean(axis=0, keepdims=True)


def half_correlation(frames: list[np.ndarray], side_by_side: bool) -> float:
    """Mean normalised correlation [-1, 1] of the two halves (left/right or top/bottom) of
    `frames` on a coarse blurred grid: near 1 for two views of one scene."""
    scores = []
    for frame in frames:
        h, w = frame.shape[:2]
        a, b = (
            (frame[:, : w // 2], frame[:, w // 2 :])
            if side_by_side
            else (frame[: h // 2], frame[h // 2 :])
        )
        x, y = _coarse(a).ravel(), _coarse(b).ravel()
        x, y = x - x.mean(), y - y.mean()
        scores.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-6)))
    return float(np.mean(scores)) if scores else 0.0


def find_circle(part: np.ndarray) -> tuple[float, float, float, float] | None:
    """(cx, cy, radius, dark fraction outside) px of the bright disc of a fisheye eye part
    [h,w] (max over frames, grey): the disc's centroid and the radius of its area; None when
    the part is not a disc on black (less than 90 % dark outside the fitted circle)."""
    bright = part > DARK
    area = float(bright.sum())
    if area < 0.2 * part.size:
        return None
    ys, xs = np.nonzero(bright)
    cx, cy = float(xs.mean()), float(ys.mean())
    radius = float(np.sqrt(area / np.pi))
    yy, xx = np.mgrid[: part.shape[0], : part.shape[1]]
    outside = np.hypot(xx - cx, yy - cy) > radius + 2
    if outside.sum() < 0.02 * part.size:
        return None
    dark = float(1.0 - bright[outside].mean())
    return (cx, cy, radius, dark) if dark >= 0.9 else None


def _eye_circles(
    frames: list[np.ndarray], fmt: StereoFormat
) -> list[tuple[float, float, float, float] | None]:
    brightest = np.max([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames], axis=0)
    circles = []
    for eye in range(2):
        top, left, h, w = eye_box(fmt, eye, brightest.shape)
        circles.append(find_circle(brightest[top : top + h, left : left + w]))
    return circles


def content_values(
    frames: list[np.ndarray],
    declared: StereoFormat,
    declared_fields: set[str],
    label: str,
    figures: dict[str, Any],
) -> dict[str, Any]:
    """Format values the content shows in the first frames, given what the sidecar and
    metadata declared (`figures` gets the measurements); ProbeError when the content refuses
    the file."""
    texture = float(np.mean([_coarse(frame).std() for frame in frames]))
    figures["texture"] = round(texture, 2)
    if texture < MIN_TEXTURE:
        raise ProbeError(
            label,
            STAGE,
            f"the first {CONTENT_SECONDS:g} s show no texture (grey-level spread "
            f"{texture:.2f} < {MIN_TEXTURE}): a blank or uniform picture has nothing to match",
        )
    lr, tb = half_correlation(frames, True), half_correlation(frames, False)
    figures.update(halves_corr_lr=round(lr, 3), halves_corr_tb=round(tb, 3))
    values: dict[str, Any] = {}
    declared_sbs = declared.layout in ("left-right", "right-left")
    if "layout" in declared_fields:
        score, other = (lr, tb) if declared_sbs else (tb, lr)
        if score < MIN_HALF_CORRELATION:
            source = declared.sources.get("layout", "declared")
            found = (
                f"the {'top and bottom' if declared_sbs else 'left and right'} halves do "
                f"(correlation {other:.2f}): it is "
                f"{'top-bottom' if declared_sbs else 'side-by-side'}"
                if other >= MIN_HALF_CORRELATION
                else "neither do the other halves: a mono video, or no stereo overlap"
            )
            raise ProbeError(
                label,
                STAGE,
                f"the {source} says {declared.layout}, but the two halves do not show one "
                f"scene (correlation {score:.2f} < {MIN_HALF_CORRELATION}); {found}",
            )
    elif max(lr, tb) >= MIN_HALF_CORRELATION:
        values["layout"] = "left-right" if lr >= tb else "top-bottom"
    else:
        raise ProbeError(
            label,
            STAGE,
            f"not a stereo video: neither the left/right halves (correlation {lr:.2f}) nor "
            f"the top/bottom halves ({tb:.2f}) show one scene from two eyes (need >= "
            f"{MIN_HALF_CORRELATION}); a mono download? (see docs/own-videos.md)",
        )
    layout_fmt = replace(declared, layout=values.get("layout", declared.layout))
    circles = [c for c in _eye_circles(frames, layout_fmt) if c is not None]
    both = len(circles) == 2
    if both:
        figures["fisheye_circles_px"] = [[round(v, 1) for v in c[:3]] for c in circles]
    if declared.projection == "fisheye" and "projection" in declared_fields:
        if (
            "fisheye_centres_px" not in declared_fields
            or "fisheye_radius_px" not in declared_fields
        ):
            if not both:
                raise ProbeError(
                    label,
                    STAGE,
                    "the projection is fisheye but the circles' centres and radius are not "
                    "given and no disc on a black border was found; give fisheye_centres_px "
                    "and fisheye_radius_px in the sidecar",
                )
            if "fisheye_centres_px" not in declared_fields:
                values["fisheye_centres_px"] = [list(c[:2]) for c in circles]
            if "fisheye_radius_px" not in declared_fields:
                values["fisheye_radius_px"] = float(np.mean([c[2] for c in circles]))
    elif "projection" not in declared_fields and both:
        centres = ", ".join(f"({c[0]:.0f}, {c[1]:.0f})" for c in circles)
        raise ProbeError(
            label,
            STAGE,
            f"each eye is a bright disc on black (centres {centres} px, radius "
            f"{circles[0][2]:.0f} px): a fisheye, which nothing declares; its field of view "
            "cannot be guessed: add a sidecar with projection fisheye and fov_deg",
        )
    return values


def probe(uri: str, label: str = "", content: bool = True) -> ProbeReport:
    """Probe one raw video; the report's `format` is what every later step will use, or
    `refused` says why not (as the ProbeError `decide_format` raises)."""
    report = ProbeReport(uri=uri)
    try:
        report.format = decide_format(uri, label or uri, report, content)
    except (ProbeError, StereoFormatError, VideoError) as e:
        report.refused = getattr(e, "message", None) or str(e)
    return report


def decide_format(uri: str, label: str, report: ProbeReport, content: bool = True) -> StereoFormat:
    """The video's StereoFormat (sidecar > metadata > content > default), filling `report`.
    ProbeError (stage `probe`) naming the video when it cannot be used."""
    _header_facts(report, label)
    try:
        with fs.open_input(uri) as handle:
            spherical = read_spherical_metadata(handle)
    except SphericalMetadataError as e:
        raise ProbeError(label, STAGE, f"unreadable spherical metadata: {e}") from None
    report.metadata = spherical.to_json_dict()
    try:
        sidecar = read_sidecar(uri)
        report.sidecar = sidecar or None
        strict = "projection" not in sidecar  # a sidecar may say how to read a mesh video
        declared_sources = [
            ("sidecar", sidecar),
            ("metadata", metadata_values(spherical, uri, refuse_projection=strict)),
        ]
        declared = resolve_format(declared_sources, uri)
    except StereoFormatError as e:
        raise ProbeError(label, STAGE, str(e)) from None
    declared_fields = {
        "fov_bounds" if k == "fov_deg" else k for _, values in declared_sources for k in values
    }
    values: dict[str, Any] = {}
    if content:
        frames, report.rotation_deg = first_frames(uri, label)
        if not frames:
            raise ProbeError(label, STAGE, f"no frames in the first {CONTENT_SECONDS:g} s")
        if report.rotation_deg:
            raise ProbeError(
                label,
                STAGE,
                f"the video asks players to rotate it by {report.rotation_deg:g}°: its eyes "
                "are not where they are stored; re-encode it upright",
            )
        values = content_values(frames, declared, declared_fields, label, report.content)
    try:
        return resolve_format([*declared_sources, ("content", values)], uri)
    except StereoFormatError as e:
        raise ProbeError(label, STAGE, f"{e} (sidecar {sidecar_uri(uri)!r})") from None
