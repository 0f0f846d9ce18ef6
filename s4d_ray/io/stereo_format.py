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
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from s4d_ray.errors import InputError
from s4d_ray.io import fs

LAYOUTS = ("left-right", "right-left", "top-bottom", "bottom-top")
"""Where the left eye sits: first named part first (right-left: the left eye is the right half)."""
PROJECTIONS = ("equirect", "fisheye")
DEFAULT_BASELINE_M = 0.063
VR180_FOV_BOUNDS = (-90.0, 90.0, -90.0, 90.0)
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
FORMAT_FIELDS = (
    "layout",
    "projection",
    "fov_bounds",
    "fisheye_centres_px",
    "fisheye_radius_px",
    "baseline_m",
)


class StereoFormatError(InputError):
    """A sidecar or metadata that does not describe a usable stereo video (names the file)."""


@dataclass(frozen=True)
class StereoFormat:
    """The stereo packing of a raw video.

    fov_bounds: (yaw left, yaw right, tilt top, tilt bottom) deg of each eye, tilt growing
    downwards (the release's `fov_bounds`); for fisheye the square field (−fov/2, fov/2, −fov/2,
    fov/2). fisheye_centres_px: ((x, y) left eye, (x, y) right eye) px in each eye's own part of
    the frame, None = the part's centre; fisheye_radius_px: px at fov/2, None = half the part's
    shorter side. sources: field → 'sidecar' | 'metadata' | 'content' | 'default' | 'release'.
    """

    layout: str = "left-right"
    projection: str = "equirect"
    fov_bounds: tuple[float, float, float, float] = VR180_FOV_BOUNDS
    fisheye_centres_px: tuple[tuple[float, float], tuple[float, float]] | None = None
    fisheye_radius_px: float | None = None
    baseline_m: float = DEFAULT_BASELINE_M
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def fov_deg(self) -> float:
        """The horizontal field of each eye, degrees."""
        return self.fov_bounds[1] - self.fov_bounds[0]

    def describe(self) -> str:
        """One line for people: `left-right equirect 180°×180°, baseline 0.063 m`."""
        yaw = self.fov_bounds[1] - self.fov_bounds[0]
        tilt = self.fov_bounds[3] - self.fov_bounds[2]
        text = f"{self.layout} {self.projection} {yaw:g}°×{tilt:g}°"
        if self.projection == "fisheye":
            centres = self.fisheye_centres_px or "centred"
            radius = "fits the eye" if self.fisheye_radius_px is None else self.fisheye_radius_px
            text += f" (circle centres {centres}, radius {radius} px)"
        return text + f", baseline {self.baseline_m:g} m"

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON (lists for tuples), sources included."""
        return json.loads(json.dumps(asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), sort_keys=True)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], where: str = "stored format") -> StereoFormat:
        """The format `to_json_dict` wrote (validated again: it may come from a file)."""
        unknown = set(data) - {*FORMAT_FIELDS, "sources"}
        if unknown:
            raise StereoFormatError(f"{where}: unknown keys {sorted(unknown)}")
        values = {k: data[k] for k in FORMAT_FIELDS if k in data}
        fmt = _validated(values, where)
        return replace(fmt, sources=dict(data.get("sources", {})))

    @classmethod
    def from_json(cls, text: str, where: str = "stored format") -> StereoFormat:
        return cls.from_json_dict(json.loads(text), where)


def _number(value: Any, key: str, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StereoFormatError(f"{where}: {key} must be a number, got {value!r}")
    if not low < value <= high:
        raise StereoFormatError(f"{where}: {key} = {value} is outside ({low:g}, {high:g}]")
    return float(value)


def _pair(value: Any, key: str, where: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise StereoFormatError(f"{where}: {key} must be [x, y], got {value!r}")
    x, y = (_number(v, key, where, -1e6, 1e6) for v in value)
    return x, y


def _validated(values: dict[str, Any], where: str) -> StereoFormat:
    """A StereoFormat from already-resolved field values, each checked (names `where`)."""
    out: dict[str, Any] = {}
    if "layout" in values:
        if values["layout"] not in LAYOUTS:
            raise StereoFormatError(
                f"{where}: layout {values['layout']!r} is not one of {', '.join(LAYOUTS)}"
            )
        out["layout"] = values["layout"]
    if "projection" in values:
        if values["projection"] not in PROJECTIONS:
            raise StereoFormatError(
                f"{where}: projection {values['projection']!r} is not one of "
                f"{', '.join(PROJECTIONS)}"
            )
        out["projection"] = values["projection"]
    if "fov_bounds" in values:
        bounds = values["fov_bounds"]
        if not isinstance(bounds, list | tuple) or len(bounds) != 4:
            raise StereoFormatError(f"{where}: fov_bounds must be 4 numbers, got {bounds!r}")
        yaw0, yaw1, tilt0, tilt1 = (_number(b, "fov_bounds", where, -361, 361) for b in bounds)
        tilt = 180 if out.get("projection") == "fisheye" else 90  # a fisheye may see behind
        if not (-180 <= yaw0 < yaw1 <= 180 and -tilt <= tilt0 < tilt1 <= tilt):
            raise StereoFormatError(
                f"{where}: fov_bounds {list(bounds)} must have -180 <= left < right <= 180 and "
                f"-{tilt} <= top < bottom <= {tilt} (tilt grows downwards)"
            )
        out["fov_bounds"] = (yaw0, yaw1, tilt0, tilt1)
    if values.get("fisheye_centres_px") is not None:
        centres = values["fisheye_centres_px"]
        if not isinstance(centres, list | tuple) or len(centres) != 2:
            raise StereoFormatError(
                f"{where}: fisheye_centres_px must be [[x, y] left, [x, y] right], got {centres!r}"
            )
        out["fisheye_centres_px"] = tuple(_pair(c, "fisheye_centres_px", where) for c in centres)
    if values.get("fisheye_radius_px") is not None:
        out["fisheye_radius_px"] = _number(
            values["fisheye_radius_px"], "fisheye_radius_px", where, 0, 1e6
        )
    if "baseline_m" in values:
        out["baseline_m"] = _number(values["baseline_m"], "baseline_m", where, 0.005, 2.0)
    fmt = StereoFormat(**out)
    if fmt.projection == "fisheye" and fmt.fov_deg > 360:
        raise StereoFormatError(f"{where}: a fisheye field of {fmt.fov_deg:g}° is over 360°")
    return fmt


def as_bounds(values: Any) -> tuple[float, float, float, float]:
    """Four numbers as fov bounds (left, right, top, bottom) floats."""
    left, right, top, bottom = (float(v) for v in values)
    return (left, right, top, bottom)


def symmetric_bounds(fov_deg: float, projection: str) -> tuple[float, float, float, float]:
    """Bounds of a field `fov_deg` wide: a fisheye's is square; an equirect's is as wide and
    at most 180° tall (a 360° equirect spans ±90° of latitude)."""
    half = fov_deg / 2.0
    tilt = half if projection == "fisheye" else min(half, 90.0)
    return (-half, half, -tilt, tilt)


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
        _number(values["fov_deg"], "fov_deg", f"sidecar {uri!r}", 0, 360)
    elif "fov_bounds" in values:
        bounds = values["fov_bounds"]
        if isinstance(bounds, list) and len(bounds) == 4:
            for b in bounds:
                _number(b, "fov_bounds", f"sidecar {uri!r}", -361, 361)
            left, right, bottom, top = bounds
            values["fov_bounds"] = [left, right, -top, -bottom]
    checked = {k: v for k, v in values.items() if k != "fov_deg"}
    _validated(checked, f"sidecar {uri!r}")  # each value checked where the user wrote it
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
    fmt = _validated(chosen, where)
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
