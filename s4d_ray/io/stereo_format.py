"""How a raw stereo video packs its two eyes: layout, projection, field of view and baseline.

One `StereoFormat` per video, decided once with its source per field (precedence: the user's
sidecar `<video file name>.s4d.json` > the file's spherical metadata > content checks > the
default, a left-right 180°×180° equirect rig with a 0.063 m baseline). It travels with every
clip of the video (the npz extra `video_format`, the clip's metadata) so every stage and tool
that reads the video reads it the same way. The projection maths is `geometry/vr180.py`.

Sidecar keys (all optional): `layout` (left-right | right-left | top-bottom | bottom-top),
`projection` (equirect | fisheye), `fov_deg` (one angle for both axes) or `fov_bounds`
[left, right, bottom, top] degrees (equirect; bottom < 0 < top as a person reads a picture),
`fisheye_centres_px` [[x, y] of the left eye, [x, y] of the right] (each in its own eye's part of
the frame, OpenCV pixel coordinates: integers are pixel centres), `fisheye_radius_px` (the
circle's radius at `fov_deg`), `baseline_m`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from s4d_ray.geometry.stereo_format import (
    DEFAULT_BASELINE_M,
    FORMAT_FIELDS,
    LAYOUTS,
    PROJECTIONS,
    VR180_FOV_BOUNDS,
    StereoFormat,
    StereoFormatError,
    as_bounds,
    checked_number,
    symmetric_bounds,
    validated_format,
)
from s4d_ray.io import fs

__all__ = [
    "DEFAULT_BASELINE_M",
    "FORMAT_FIELDS",
    "LAYOUTS",
    "PROJECTIONS",
    "VR180_FOV_BOUNDS",
    "StereoFormat",
    "StereoFormatError",
    "as_bounds",
    "metadata_values",
    "read_sidecar",
    "resolve_format",
    "sidecar_uri",
    "symmetric_bounds",
]

SIDECAR_SUFFIX = ".s4d.json"
MAX_SIDECAR_BYTES = 64 * 1024
SIDECAR_KEYS = (
    "layout",
    "projection",
    "fov_deg",
    "fov_bounds",
    "fisheye_centres_px",
    "fisheye_radius_px",
    "baseline_m",
)


def sidecar_uri(video_uri: str) -> str:
    """`<video file name>.s4d.json` beside the video."""
    return video_uri + SIDECAR_SUFFIX


def read_sidecar(video_uri: str) -> dict[str, Any]:
    """The sidecar's fields as format values ({} when there is none). Sidecar `fov_bounds`
    are [left, right, bottom, top] as a person reads them and are turned to (left, right,
    top, bottom) with tilt growing downwards; `fov_deg` is kept for `resolve_format`, which
    knows the projection it applies to."""
    uri = sidecar_uri(video_uri)
    if not fs.exists(uri):
        return {}
    raw = fs.read_bytes(uri)
    if len(raw) > MAX_SIDECAR_BYTES:
        raise StereoFormatError(f"sidecar {uri!r} is {len(raw)} bytes (max {MAX_SIDECAR_BYTES})")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StereoFormatError(f"sidecar {uri!r} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise StereoFormatError(f"sidecar {uri!r} must hold a JSON object")
    unknown = set(data) - set(SIDECAR_KEYS)
    if unknown:
        raise StereoFormatError(
            f"sidecar {uri!r}: unknown keys {sorted(unknown)} (known: {', '.join(SIDECAR_KEYS)})"
        )
    if "fov_deg" in data and "fov_bounds" in data:
        raise StereoFormatError(f"sidecar {uri!r}: give fov_deg or fov_bounds, not both")
    values = dict(data)
    if "fov_deg" in values:
        checked_number(values["fov_deg"], "fov_deg", f"sidecar {uri!r}", 0, 360)
    elif "fov_bounds" in values:
        bounds = values["fov_bounds"]
        if isinstance(bounds, list) and len(bounds) == 4:
            for b in bounds:
                checked_number(b, "fov_bounds", f"sidecar {uri!r}", -361, 361)
            left, right, bottom, top = bounds
            values["fov_bounds"] = [left, right, -top, -bottom]
    checked = {k: v for k, v in values.items() if k != "fov_deg"}
    validated_format(checked, f"sidecar {uri!r}")  # each value checked where the user wrote it
    return values


def resolve_format(
    sources: list[tuple[str, dict[str, Any]]], where: str, default: StereoFormat | None = None
) -> StereoFormat:
    """Merge field values by precedence: `sources` is [(name, values)] first-wins (e.g.
    [('sidecar', …), ('metadata', …), ('content', …)]), anything unset from `default`
    (source 'default'). `fov_deg` sets `fov_bounds` (`symmetric_bounds` of the chosen
    projection); a fisheye format without a field of its own gets 180°."""
    default = default or StereoFormat()
    picked: dict[str, tuple[str, str, Any]] = {}  # field -> (source, key as given, value)
    for name, values in sources:
        for key, value in values.items():
            if value is not None:
                picked.setdefault("fov_bounds" if key == "fov_deg" else key, (name, key, value))
    chosen = {name: value for name, (_, _, value) in picked.items()}
    origin = {name: source for name, (source, _, _) in picked.items()}
    projection = chosen.get("projection", default.projection)
    if "fov_bounds" in picked and picked["fov_bounds"][1] == "fov_deg":
        chosen["fov_bounds"] = symmetric_bounds(float(chosen["fov_bounds"]), projection)
    if projection == "fisheye" and "fov_bounds" not in chosen:
        chosen["fov_bounds"], origin["fov_bounds"] = VR180_FOV_BOUNDS, "default"
    for key in FORMAT_FIELDS:
        if key not in chosen:
            chosen[key], origin[key] = getattr(default, key), default.sources.get(key, "default")
    fmt = validated_format(chosen, where)
    return replace(fmt, sources=origin)


UNSUPPORTED_PROJECTIONS = {
    "cubemap": "a cubemap (cbmp)",
    "mesh": "a mesh projection (mshp, the VR180 camera format)",
    "rectangular": "a flat (rectangular) picture",
}


def metadata_values(metadata: Any, uri: str, refuse_projection: bool = True) -> dict[str, Any]:
    """Format values from a file's spherical metadata (`io.spherical.SphericalMetadata`):
    layout from st3d / Matroska StereoMode, projection and bounds from sv3d / Projection.
    StereoFormatError naming the file for what cannot be read as a stereo pair (mono,
    custom packing, and — with `refuse_projection` — cubemap, mesh, flat; without it such a
    projection is left to the other sources: YouTube's VR180 streams declare a mesh, and a
    sidecar or the release's own bounds say how they were read)."""
    values: dict[str, Any] = {}
    mode = metadata.stereo_mode
    if mode == "mono":
        raise StereoFormatError(
            f"{uri!r} declares itself mono ({'/'.join(metadata.sources)}): a monoscopic video "
            "has no second eye (download the stereo format, see docs/own-videos.md)"
        )
    if mode == "custom":
        raise StereoFormatError(
            f"{uri!r} declares a custom stereo packing ({'/'.join(metadata.sources)}); "
            f"describe it in a sidecar {sidecar_uri(uri)!r} (layout: {', '.join(LAYOUTS)})"
        )
    if mode in LAYOUTS:
        values["layout"] = mode
    projection = metadata.projection
    if projection in UNSUPPORTED_PROJECTIONS and refuse_projection:
        raise StereoFormatError(
            f"{uri!r} is {UNSUPPORTED_PROJECTIONS[projection]}: not supported (equirect and "
            "equidistant fisheye are); convert it to equirect first"
        )
    if projection == "equirect":
        values["projection"] = "equirect"
        if metadata.fov_bounds is not None:
            values["fov_bounds"] = as_bounds(metadata.fov_bounds)
    return values
