"""How a raw stereo video packs its two eyes: layout, projection, field of view and baseline.

`StereoFormat` is the description every projection function of `geometry/vr180.py` takes; it
is decided per video (sidecar > spherical metadata > content > default) by
`s4d_ray.io.stereo_format` and `s4d_ray.ownvideo.probe`, and travels with every clip as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from s4d_ray.errors import InputError

LAYOUTS = ("left-right", "right-left", "top-bottom", "bottom-top")
"""Where the left eye sits: first named part first (right-left: the left eye is the right half)."""
PROJECTIONS = ("equirect", "fisheye")
DEFAULT_BASELINE_M = 0.063
VR180_FOV_BOUNDS = (-90.0, 90.0, -90.0, 90.0)
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
        fmt = validated_format(values, where)
        return replace(fmt, sources=dict(data.get("sources", {})))

    @classmethod
    def from_json(cls, text: str, where: str = "stored format") -> StereoFormat:
        return cls.from_json_dict(json.loads(text), where)


def checked_number(value: Any, key: str, where: str, low: float, high: float) -> float:
    """`value` as a finite float in (low, high], else a StereoFormatError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StereoFormatError(f"{where}: {key} must be a number, got {value!r}")
    if not low < value <= high:
        raise StereoFormatError(f"{where}: {key} = {value} is outside ({low:g}, {high:g}]")
    return float(value)


def checked_pair(value: Any, key: str, where: str) -> tuple[float, float]:
    """`value` as an (x, y) pair of finite floats, else a StereoFormatError."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise StereoFormatError(f"{where}: {key} must be [x, y], got {value!r}")
    x, y = (checked_number(v, key, where, -1e6, 1e6) for v in value)
    return x, y


def validated_format(values: dict[str, Any], where: str) -> StereoFormat:
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
        yaw0, yaw1, tilt0, tilt1 = (
            checked_number(b, "fov_bounds", where, -361, 361) for b in bounds
        )
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
        out["fisheye_centres_px"] = tuple(
            checked_pair(c, "fisheye_centres_px", where) for c in centres
        )
    if values.get("fisheye_radius_px") is not None:
        out["fisheye_radius_px"] = checked_number(
            values["fisheye_radius_px"], "fisheye_radius_px", where, 0, 1e6
        )
    if "baseline_m" in values:
        out["baseline_m"] = checked_number(values["baseline_m"], "baseline_m", where, 0.005, 2.0)
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
