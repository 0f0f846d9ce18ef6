"""Synthetic VR180 clips with ground truth: a small ray-traced world rendered as stereo equirect.

The scene is analytic so that every pixel has exact ground truth: a textured ground (road and
sidewalk), building façades and a back wall, a sky, and a few independently moving textured
ellipsoids — rigid ones ("cars") that translate and spin, non-rigid ones ("people") whose shape
also changes over time. A camera rig translates and rotates smoothly; the right eye sits 0.063 m
to the right of the left one. Each eye of the raw video is rendered through a small known rig
miscalibration (`rectified2rig`), so rectification has real work to do.

The raw video can be packed as any kind of file people have (`SynthConfig`): left-right,
right-left or top-bottom; equirect (180°, 360°, cropped bounds, squeezed eyes) or equidistant
fisheye with off-centre circles; mp4 with Spherical Video V2 boxes, mkv or webm with Matroska
StereoMode, or no metadata at all; named `<video_id>.<ext>` or yt-dlp's `Title [<video_id>].<ext>`;
a `.s4d.json` sidecar on request. Every pixel is ray-traced through the exact projection, so
each path is tested against exact ground truth; the clip npz carries the format (`video_format`).

Outputs follow the Stereo4D dataset layout (`raw/<video_id>.mp4`, `npz/<clip_id>.npz`) plus our
ground truth under `gt/<clip_id>.npz`: per-frame rectified left depth [T,S,S] m (0 = sky),
ADE20K labels [T,S,S] uint8, object ids [T,S,S] int16 (0 = static world), dense 2D tracks
[N,T,2] px, visibility [N,T], per-track object ids [N], world tracks [N,T,3] m.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from s4d_ray.geometry.camera import (
    RECTIFIED_HFOV_DEG,
    RECTIFIED_SIZE,
    STEREO_BASELINE_M,
    intrinsics,
    perspective_rays,
    project_points,
    rotation_matrix,
)
from s4d_ray.geometry.vr180 import eye_box, eye_pixel_rays, eye_pixels_to_rays
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, write_clip
from s4d_ray.io.ids import make_clip_id
from s4d_ray.io.spherical import write_spherical_mp4
from s4d_ray.io.stereo_format import StereoFormat, sidecar_uri, symmetric_bounds
from s4d_ray.io.video import write_video
from s4d_ray.io.video_lookup import VIDEO_FORMAT_EXTRA

log = logging.getLogger(__name__)

# ADE20K (151 labels, 0 = background) ids used by the synthetic world.
ADE_WALL, ADE_BUILDING, ADE_SKY, ADE_ROAD, ADE_SIDEWALK, ADE_PERSON, ADE_CAR = (
    1,
    2,
    3,
    7,
    12,
    13,
    21,
)

FOV_BOUNDS = np.array([-90.0, 90.0, -90.0, 90.0])
GROUND_Y = 1.6  # the ground is 1.6 m below the rig (y points down)
SKY_Y = -4.0  # façades and walls end 4 m above the rig
SIDE_X = 7.0
SIDEWALK_FROM_X = SIDE_X - 1.8  # the ground is sidewalk within 1.8 m of the façades
BACK_Z = 16.0
TEXTURE_SIZE = 512


def make_texture(rng: np.random.Generator, size: int = TEXTURE_SIZE) -> np.ndarray:
    """Tileable multi-scale noise texture [S,S,3] uint8 with a random two-colour palette."""
    acc = np.zeros((size, size), np.float32)
    for cells, weight in ((4, 1.0), (8, 0.8), (16, 0.7), (32, 0.6), (64, 0.5), (128, 0.35)):
        coarse = rng.standard_normal((cells, cells)).astype(np.float32)
        tiled = np.tile(coarse, (3, 3))
        up = cv2.resize(tiled, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
        acc += weight * up[size : 2 * size, size : 2 * size]
    acc = (acc - acc.mean()) / (acc.std() + 1e-6)
    t = 1.0 / (1.0 + np.exp(-1.5 * acc))
    palette = rng.uniform(20, 235, size=(2, 3)).astype(np.float32)
    img = palette[0] * (1 - t[..., None]) + palette[1] * t[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def sample_texture(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of `texture` at texel coords (u, v) [M] -> [M,3] float32."""
    if u.size == 0:
        return np.zeros((0, 3), np.float32)
    width = 1024  # cv2.remap wants maps narrower than 32767 px: fold [M] into rows
    rows = -(-u.size // width)
    maps = np.zeros((2, rows * width), np.float32)
    maps[0, : u.size], maps[1, : u.size] = u, v
    size = texture.shape[0]
    maps %= size  # BORDER_WRAP only wraps one period; fold coordinates into the tile first
    out = cv2.remap(
        texture,
        maps[0].reshape(rows, width),
        maps[1].reshape(rows, width),
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )
    return out.reshape(-1, 3)[: u.size].astype(np.float32)


@dataclass
class Plane:
    """Axis-aligned textured rectangle: points with coordinate `axis` == `offset`, within bounds.

    `bounds` gives (lo, hi) for the two other axes in increasing axis order; `texel_m` is the
    texture's metres per texel; `label` its ADE20K id (ground switches to sidewalk near façades).
    """

    axis: int
    offset: float
    bounds: tuple[tuple[float, float], tuple[float, float]]
    label: int
    texture: np.ndarray
    texel_m: float = 0.02


@dataclass
class Ellipsoid:
    """A moving textured ellipsoid; canonical points live on the unit sphere.

    world(p, t) = centre(t) + R(t) @ (radii(t) * p). Rigid when `wobble` is zero.
    """

    object_id: int
    label: int
    texture: np.ndarray
    radii: np.ndarray
    centre0: np.ndarray
    velocity: np.ndarray
    sway: np.ndarray
    spin_axis: np.ndarray
    spin_rate: float
    wobble: np.ndarray
    wobble_rate: float
    phase: float

    def centre(self, t: float) -> np.ndarray:
        return self.centre0 + self.velocity * t + self.sway * np.sin(1.3 * t + self.phase)

    def rotation(self, t: float) -> np.ndarray:
        return rotation_matrix(self.spin_axis, self.spin_rate * t + self.phase)

    def radii_at(self, t: float) -> np.ndarray:
        return self.radii * (1.0 + self.wobble * np.sin(self.wobble_rate * t + self.phase))

    def to_world(self, canon: np.ndarray, t: float) -> np.ndarray:
        """Canonical unit-sphere points [K,3] -> world [K,3] m at time t (s)."""
        return (canon * self.radii_at(t)) @ self.rotation(t).T + self.centre(t)

    def to_canonical(self, world: np.ndarray, t: float) -> np.ndarray:
        return ((world - self.centre(t)) @ self.rotation(t)) / self.radii_at(t)


@dataclass
class Hits:
    """Ray-cast result per ray: distance along the ray, surface index (-1 = sky), canonical point."""

    dist: np.ndarray
    surface: np.ndarray
    canonical: np.ndarray


@dataclass
class Scene:
    """The synthetic world: static planes, moving ellipsoids, and the rig trajectory."""

    planes: list[Plane]
    objects: list[Ellipsoid]
    sky_texture: np.ndarray
    camera_speed: np.ndarray
    camera_sway: np.ndarray
    rotation_amplitude_deg: np.ndarray
    rotation_rates: np.ndarray
    rectified2rig: np.ndarray
    light: np.ndarray = field(default_factory=lambda: np.array([0.3, -0.8, -0.5]))
    sidewalk_from_x: float = SIDEWALK_FROM_X

    @property
    def surfaces(self) -> list[Plane | Ellipsoid]:
        return [*self.planes, *self.objects]

    def camera2world(self, t: float) -> np.ndarray:
        """[3,4] pose of the rectified left camera at time t (s)."""
        yaw, pitch, roll = np.radians(self.rotation_amplitude_deg) * np.sin(
            self.rotation_rates * t + np.array([0.0, 1.0, 2.0])
        )
        rot = (
            rotation_matrix([0, 1, 0], yaw)
            @ rotation_matrix([1, 0, 0], pitch)
            @ rotation_matrix([0, 0, 1], roll)
        )
        centre = self.camera_speed * t + self.camera_sway * np.sin(np.array([1.1, 2.3, 0.7]) * t)
        return np.concatenate([rot, centre[:, None]], axis=1)

    def cast(self, origin: np.ndarray, dirs: np.ndarray, t: float) -> Hits:
        """Intersect rays `origin [3]` + s·`dirs [M,3]` (unit) with the world at time t."""
        dirs = dirs.astype(np.float32, copy=False)
        m = dirs.shape[0]
        best = np.full(m, np.inf, np.float32)
        surface = np.full(m, -1, np.int32)
        canonical = np.zeros((m, 3), np.float32)
        for index, surf in enumerate(self.surfaces):
            if isinstance(surf, Plane):
                d_axis = dirs[:, surf.axis]
                with np.errstate(divide="ignore", invalid="ignore"):
                    s = (surf.offset - origin[surf.axis]) / d_axis
                    rays = np.nonzero((s > 1e-6) & (s < best))[0]
                s = s[rays]
                hit = origin.astype(np.float32) + s[:, None] * dirs[rays]
                others = [a for a in range(3) if a != surf.axis]
                ok = np.ones(rays.size, bool)
                for a, (lo, hi) in zip(others, surf.bounds, strict=True):
                    ok &= (hit[:, a] >= lo) & (hit[:, a] <= hi)
                canon = hit
            else:
                rot, radii, centre = surf.rotation(t), surf.radii_at(t), surf.centre(t)
                # cheap bounding-sphere test first: most rays miss a small object
                to_centre = (centre - origin).astype(np.float32)
                along = dirs @ to_centre
                miss2 = to_centre @ to_centre - along * along
                rays = np.nonzero((miss2 < radii.max() ** 2) & (along > 0))[0]
                o = ((origin - centre) @ rot) / radii
                d = (dirs[rays] @ rot.astype(np.float32)) / radii.astype(np.float32)
                a = np.einsum("ij,ij->i", d, d)
                b = 2.0 * d @ o.astype(np.float32)
                c = o @ o - 1.0
                disc = b * b - 4 * a * c
                with np.errstate(invalid="ignore"):
                    s = (-b - np.sqrt(disc)) / (2 * a)
                ok = (disc > 0) & (s > 1e-6) & (s < best[rays])
                canon = o + s[:, None] * d
            chosen = rays[ok]
            best[chosen] = s[ok]
            surface[chosen] = index
            canonical[chosen] = canon[ok]
        return Hits(best.astype(np.float64), surface, canonical.astype(np.float64))

    def labels_of(self, hits: Hits) -> np.ndarray:
        """ADE20K label per ray [M] uint8 (sky where nothing was hit)."""
        table = np.array([s.label for s in self.surfaces] + [ADE_SKY], np.uint8)
        labels = table[hits.surface]
        on_ground = hits.surface == 0  # the road plane, sidewalk near the façades
        labels[on_ground & (np.abs(hits.canonical[:, 0]) > self.sidewalk_from_x)] = ADE_SIDEWALK
        return labels

    def object_ids_of(self, hits: Hits) -> np.ndarray:
        """Object id per ray [M] int16: 0 for the static world and the sky."""
        table = np.array([0] * len(self.planes) + [o.object_id for o in self.objects] + [0])
        return table[hits.surface].astype(np.int16)

    def shade(self, dirs: np.ndarray, hits: Hits, t: float) -> np.ndarray:
        """RGB [M,3] uint8 of each ray's hit (textured, objects lit by one directional light)."""
        rgb = np.zeros((dirs.shape[0], 3), np.float32)
        for index, surf in enumerate(self.surfaces):
            sel = np.nonzero(hits.surface == index)[0]
            if sel.size == 0:
                continue
            p = hits.canonical[sel]
            if isinstance(surf, Plane):
                a, b = [ax for ax in range(3) if ax != surf.axis]
                colour = sample_texture(
                    surf.texture, p[:, a] / surf.texel_m, p[:, b] / surf.texel_m
                )
                if index == 0:
                    walk = np.abs(p[:, 0]) > self.sidewalk_from_x
                    colour[walk] = 0.55 * colour[walk] + 90.0
            else:
                lon = np.arctan2(p[:, 0], p[:, 2])
                lat = np.arcsin(np.clip(p[:, 1], -1, 1))
                size = surf.texture.shape[0]
                colour = sample_texture(
                    surf.texture, (lon / (2 * np.pi) + 0.5) * size * 2, (lat / np.pi + 0.5) * size
                )
                normal = (p / surf.radii_at(t)) @ surf.rotation(t).T
                normal /= np.linalg.norm(normal, axis=1, keepdims=True)
                light = self.light / np.linalg.norm(self.light)
                colour *= (0.55 + 0.45 * np.clip(-(normal @ light), 0, 1))[:, None]
            rgb[sel] = colour
        sky = np.nonzero(hits.surface < 0)[0]
        if sky.size:
            d = dirs[sky]
            elevation = np.clip(-d[:, 1], -1, 1)
            base = np.array([200.0, 215.0, 235.0]) * (1 - 0.35 * elevation[:, None])
            size = self.sky_texture.shape[0]
            lon = np.arctan2(d[:, 0], d[:, 2])
            clouds = sample_texture(
                self.sky_texture, (lon / np.pi + 1) * size, (elevation + 1) * size / 2
            )
            rgb[sky] = 0.8 * base + 0.2 * clouds
        return np.clip(rgb, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SceneShape:
    """What a synthetic street looks like beyond its seed: camera_speed_m_s forward (0: drawn,
    0.4–0.9 m/s; the path is this times the clip's duration); mover_scale: the moving
    objects' size factor (2.5: about a third of the view moves); depth_scale: the street's
    width, length and façade height factor (2.5: most of the scene beyond 10 m)."""

    camera_speed_m_s: float = 0.0
    mover_scale: float = 1.0
    depth_scale: float = 1.0

    def to_array(self) -> np.ndarray:
        return np.array([self.camera_speed_m_s, self.mover_scale, self.depth_scale])

    @classmethod
    def from_array(cls, values: np.ndarray) -> SceneShape:
        return cls(*(float(v) for v in values))


def build_scene(
    rng: np.random.Generator, num_objects: int = 4, shape: SceneShape | None = None
) -> Scene:
    """A random but plausible street: ground, façades, back wall, sky, moving objects (one
    `rng` draws the same street whatever its `shape`)."""
    shape = shape or SceneShape()
    side, back, top = (v * shape.depth_scale for v in (SIDE_X, BACK_Z, SKY_Y))
    near, far = -30.0 * shape.depth_scale, back
    planes = [
        Plane(1, GROUND_Y, ((-side, side), (near, far)), ADE_ROAD, make_texture(rng)),
        Plane(2, back, ((-side, side), (top, GROUND_Y)), ADE_WALL, make_texture(rng)),
        Plane(0, -side, ((top, GROUND_Y), (near, far)), ADE_BUILDING, make_texture(rng)),
        Plane(0, side, ((top, GROUND_Y), (near, far)), ADE_BUILDING, make_texture(rng)),
    ]
    objects = []
    for k in range(num_objects):
        rigid = k % 2 == 0
        if rigid:
            radii = rng.uniform([0.6, 0.35, 0.9], [0.9, 0.5, 1.3])
        else:
            radii = rng.uniform([0.25, 0.7, 0.25], [0.35, 0.9, 0.35])
        radii = radii * shape.mover_scale
        depth = rng.uniform(3.5, 9.0)
        lateral = rng.uniform(-2.5, 2.5)
        centre0 = np.array([lateral, GROUND_Y - radii[1] - 0.05, depth])
        speed = rng.uniform(0.4, 1.2) * rng.choice([-1, 1])
        objects.append(
            Ellipsoid(
                object_id=k + 1,
                label=ADE_CAR if rigid else ADE_PERSON,
                texture=make_texture(rng, 256),
                radii=radii,
                centre0=centre0,
                velocity=np.array([speed, 0.0, rng.uniform(-0.3, 0.3)]),
                sway=np.array([0.0, 0.0 if rigid else 0.05, 0.15]),
                spin_axis=np.array([0.0, 1.0, 0.0]) + rng.normal(0, 0.2, 3),
                spin_rate=rng.uniform(0.3, 1.0) * rng.choice([-1, 1]),
                wobble=np.zeros(3) if rigid else rng.uniform(0.08, 0.18, 3),
                wobble_rate=rng.uniform(4.0, 7.0),
                phase=rng.uniform(0, 2 * np.pi),
            )
        )
    rectified2rig = np.stack(
        [rotation_matrix(rng.normal(size=3), np.radians(rng.uniform(0.4, 1.2))) for _ in range(2)]
    )
    sky_texture = make_texture(rng, 256)
    camera_speed = np.array([rng.uniform(-0.1, 0.1), 0.0, rng.uniform(0.4, 0.9)])
    if shape.camera_speed_m_s > 0:
        camera_speed *= shape.camera_speed_m_s / np.linalg.norm(camera_speed)
    return Scene(
        planes=planes,
        objects=objects,
        sky_texture=sky_texture,
        camera_speed=camera_speed,
        camera_sway=np.array([0.05, 0.02, 0.0]),
        rotation_amplitude_deg=rng.uniform([3.0, 1.5, 0.5], [7.0, 3.0, 1.0]),
        rotation_rates=rng.uniform([0.8, 1.0, 0.6], [1.5, 1.8, 1.2]),
        rectified2rig=rectified2rig,
        sidewalk_from_x=side - (SIDE_X - SIDEWALK_FROM_X),
    )


def render_equirect_frame(scene: Scene, t: float, eye_height: int) -> np.ndarray:
    """Raw side-by-side 180° equirect frame [H,2H,3] uint8 at time t (the release's kind)."""
    return render_stereo_frame(scene, t, StereoFormat(), (eye_height, 2 * eye_height))


def render_stereo_frame(
    scene: Scene, t: float, fmt: StereoFormat, frame_hw: tuple[int, int], samples: int = 1
) -> np.ndarray:
    """Raw stereo frame [H,W,3] uint8 at time t packed as `fmt`, each eye seen through its rig
    (`fmt.baseline_m` apart); black outside a fisheye's circle (decided at the pixel centre).

    `samples` > 1 averages samples×samples rays spread evenly over each pixel, as a camera's
    pixel integrates light: one ray per pixel aliases far textures into patterns that differ
    between the eyes, which biased stereo matches in some scenes (a field-of-view estimate 9 %
    off with the true rig, gone with 2×2 samples)."""
    frame = np.zeros((*frame_hw, 3), np.uint8)
    c2w = scene.camera2world(t)
    steps = (np.arange(samples) + 0.5) / samples - 0.5
    for eye in range(2):
        top, left, h, w = eye_box(fmt, eye, frame_hw)
        _, inside = eye_pixel_rays(fmt, eye, frame_hw)
        v, u = np.nonzero(inside)
        total = np.zeros((u.size, 3), np.float32)
        for du in steps:
            for dv in steps:
                uv = np.stack([u + du, v + dv], -1).astype(np.float64)
                rays_rig = eye_pixels_to_rays(uv, fmt, eye, (h, w))[0].astype(np.float32)
                # r_rect = R^T r_rig (row form: r_rig @ R), then into the world by the camera
                dirs = rays_rig @ (scene.rectified2rig[eye] @ c2w[:, :3].T).astype(np.float32)
                origin = c2w[:, 3] + eye * fmt.baseline_m * c2w[:, 0]
                total += scene.shade(dirs, scene.cast(origin, dirs, t), t)
        part = frame[top : top + h, left : left + w]
        mean = total / samples**2
        part[v, u] = np.clip(mean if samples == 1 else mean + 0.5, 0, 255).astype(np.uint8)
    return frame


def synth_format(config: SynthConfig) -> tuple[StereoFormat, tuple[int, int]]:
    """The packing and frame size (H, W) px of a synthetic raw video of `config`."""
    h = config.height
    if config.projection == "fisheye":
        fov = config.fov_deg or 190.0
        w = config.eye_width or h
        radius = 0.49 * min(h, w)
        shift = 0.004 * min(h, w)  # off-centre circles, as real dual-fisheye lenses are
        centres = (
            ((w - 1) / 2 + 1.5 * shift, (h - 1) / 2 - shift),
            ((w - 1) / 2 - shift, (h - 1) / 2 + 1.5 * shift),
        )
        fmt = StereoFormat(
            layout=config.layout,
            projection="fisheye",
            fov_bounds=symmetric_bounds(fov, "fisheye"),
            fisheye_centres_px=centres,
            fisheye_radius_px=radius,
        )
    else:
        bounds = config.fov_bounds or symmetric_bounds(config.fov_deg or 180.0, "equirect")
        natural = h * (bounds[1] - bounds[0]) / (bounds[3] - bounds[2])
        w = config.eye_width or 2 * int(round(natural / 2))
        left, right, top, bottom = (float(b) for b in bounds)
        fmt = StereoFormat(layout=config.layout, fov_bounds=(left, right, top, bottom))
    side_by_side = config.layout in ("left-right", "right-left")
    return fmt, ((h, 2 * w) if side_by_side else (2 * h, w))


def render_rectified(
    scene: Scene, t: float, eye: int = 0, size: int = RECTIFIED_SIZE
) -> dict[str, Any]:
    """Ground-truth rectified view of one eye: rgb, depth (z, m; 0 = sky), labels, object ids
    (arrays) and the ray `hits` (a `Hits`)."""
    rays_cam = perspective_rays(size, size, RECTIFIED_HFOV_DEG).reshape(-1, 3)
    c2w = scene.camera2world(t)
    dirs = rays_cam @ c2w[:, :3].T
    origin = c2w[:, 3] + eye * STEREO_BASELINE_M * c2w[:, 0]
    hits = scene.cast(origin, dirs, t)
    depth = np.where(np.isfinite(hits.dist), hits.dist * rays_cam[:, 2], 0.0)
    shape = (size, size)
    return {
        "rgb": scene.shade(dirs, hits, t).reshape(size, size, 3),
        "depth": depth.reshape(shape).astype(np.float32),
        "labels": scene.labels_of(hits).reshape(shape),
        "object_ids": scene.object_ids_of(hits).reshape(shape),
        "hits": hits,
    }


def ground_truth_tracks(
    scene: Scene,
    times: np.ndarray,
    views: list[dict[str, Any]],
    num_tracks: int,
    rng: np.random.Generator,
    size: int = RECTIFIED_SIZE,
) -> dict[str, np.ndarray]:
    """Dense GT tracks of surface points sampled from the left views at a few frames.

    Returns world points [N,T,3] m, 2D tracks [N,T,2] px, visibility [N,T] bool (in the image and
    not occluded in the left rectified view), object ids [N].
    """
    num_frames = len(times)
    anchors = np.unique(np.linspace(0, num_frames - 1, min(4, num_frames)).astype(int))
    per_anchor = int(np.ceil(num_tracks / len(anchors)))
    canon_list, surf_list = [], []
    for f in anchors:
        hits = views[f]["hits"]
        candidates = np.nonzero(hits.surface >= 0)[0]
        pick = rng.choice(candidates, size=min(per_anchor, candidates.size), replace=False)
        for index in pick:
            surf = scene.surfaces[hits.surface[index]]
            world = hits.canonical[index]
            if isinstance(surf, Ellipsoid):
                world = surf.to_world(world[None], times[f])[0]
                canon = surf.to_canonical(world[None], times[f])[0]
            else:
                canon = world
            canon_list.append(canon)
            surf_list.append(hits.surface[index])
    canon = np.array(canon_list)[:num_tracks]
    surf_index = np.array(surf_list)[:num_tracks]
    n = canon.shape[0]
    world = np.zeros((n, num_frames, 3))
    for j, surf in enumerate(scene.surfaces):
        sel = surf_index == j
        if not sel.any():
            continue
        for f, t in enumerate(times):
            world[sel, f] = (
                surf.to_world(canon[sel], t) if isinstance(surf, Ellipsoid) else canon[sel]
            )
    k = intrinsics(size, size, RECTIFIED_HFOV_DEG)
    tracks_2d = np.zeros((n, num_frames, 2))
    visible = np.zeros((n, num_frames), bool)
    for f, t in enumerate(times):
        c2w = scene.camera2world(t)
        w2c = np.concatenate([c2w[:, :3].T, -c2w[:, :3].T @ c2w[:, 3:]], axis=1)
        px, z = project_points(world[:, f], w2c, k)
        tracks_2d[:, f] = px
        inside = (z > 0.05) & (px[:, 0] >= 0) & (px[:, 0] < size) & (px[:, 1] >= 0)
        inside &= px[:, 1] < size
        offset = world[:, f] - c2w[:, 3]
        dist = np.linalg.norm(offset, axis=1)
        hits = scene.cast(c2w[:, 3], offset / dist[:, None], t)
        unoccluded = (hits.surface == surf_index) & (np.abs(hits.dist - dist) < 1e-3 * dist + 1e-3)
        visible[:, f] = inside & unoccluded
    keep = visible.any(axis=1)
    object_table = np.array([0] * len(scene.planes) + [o.object_id for o in scene.objects])
    return {
        "tracks_3d": world[keep].astype(np.float32),
        "tracks_2d": tracks_2d[keep].astype(np.float32),
        "visible": visible[keep],
        "track_object_ids": object_table[surf_index[keep]].astype(np.int16),
    }


CONTAINERS = {
    "mp4": ("mp4", "libx264"),
    "mkv": ("matroska", "libx264"),
    "webm": ("webm", "libvpx-vp9"),
}
"""Container suffix → (FFmpeg muxer, video codec) of the synthetic raw videos."""


@dataclass(frozen=True)
class SynthConfig:
    """What `s4d synth` makes: clips of `frames` frames from eyes `height` px tall.

    The raw video's kind: `layout`; `projection` equirect (`fov_deg` 180 or 360, or
    `fov_bounds` (left, right, top, bottom) deg) or fisheye (`fov_deg`, default 190);
    `eye_width` px squeezes the eyes (0: square pixels); `container` mp4 | mkv | webm;
    `metadata` writes the layout and projection into the file (st3d/sv3d in mp4; the layout
    only, as StereoMode, in Matroska); `sidecar` writes `<file>.s4d.json` with the whole format; `title` names the file
    `<title> [<video_id>].<ext>` as yt-dlp does; `supersample` averages that many rays per
    pixel along each axis (see `render_stereo_frame`; 1: one ray, fastest); `shape` the
    street's camera speed, mover size and depth (`SceneShape`).
    """

    clips: int = 2
    frames: int = 24
    height: int = 512
    seed: int = 0
    fps: float = 30.0
    tracks: int = 1500
    lead_frames: int = 3
    tail_frames: int = 2
    num_objects: int = 4
    layout: str = "left-right"
    projection: str = "equirect"
    fov_deg: float = 0.0
    fov_bounds: tuple[float, float, float, float] | None = None
    eye_width: int = 0
    container: str = "mp4"
    metadata: bool = False
    sidecar: bool = False
    title: str = ""
    supersample: int = 1
    shape: SceneShape = field(default_factory=SceneShape)

    def __post_init__(self) -> None:
        if (
            self.metadata
            and self.container == "mp4"
            and (self.projection != "equirect" or self.layout in ("right-left", "bottom-top"))
        ):
            raise ValueError(
                f"mp4 spherical metadata cannot say {self.layout} {self.projection} (st3d/sv3d "
                "know left-right, top-bottom and equirect): use mkv or webm, or a sidecar"
            )


def write_raw_video(
    out_dir: str, video_id: str, frames, config: SynthConfig, fmt: StereoFormat
) -> str:
    """Encode a synthetic raw video of `config`'s kind under `out_dir/raw`; its URI."""
    stem = f"{config.title} [{video_id}]" if config.title else video_id
    uri = fs.join(out_dir, "raw", f"{stem}.{config.container}")
    muxer, codec = CONTAINERS[config.container]
    stereo_tag = {}
    if config.metadata and muxer != "mp4":
        stereo_tag = {"stereo_mode": fmt.layout.replace("-", "_")}
    write_video(uri, frames, fps=config.fps, codec=codec, muxer=muxer, stream_metadata=stereo_tag)
    if config.metadata and muxer == "mp4":
        write_spherical_mp4(fs.filesystem(uri)[1], fmt.layout, "equirect", fmt.fov_bounds)
    if config.sidecar:
        fs.write_bytes(sidecar_uri(uri), json.dumps(sidecar_of(fmt), indent=1).encode())
    return uri


def sidecar_of(fmt: StereoFormat) -> dict:
    """The `.s4d.json` sidecar that describes `fmt` in full (the user-facing conventions)."""
    left, right, top, bottom = fmt.fov_bounds
    out: dict = {
        "layout": fmt.layout,
        "projection": fmt.projection,
        "fov_bounds": [left, right, -bottom, -top],
        "baseline_m": fmt.baseline_m,
    }
    if fmt.projection == "fisheye":
        out = {**out, "fov_deg": fmt.fov_deg, "fisheye_radius_px": fmt.fisheye_radius_px}
        centres = fmt.fisheye_centres_px
        out["fisheye_centres_px"] = None if centres is None else [list(c) for c in centres]
        del out["fov_bounds"]
    return out


def synth_clip(out_dir: str, config: SynthConfig, clip_index: int) -> str:
    """Render one video + clip and write raw/, npz/ and gt/ under `out_dir`; return the clip id."""
    rng = np.random.default_rng([config.seed, clip_index])
    scene = build_scene(rng, config.num_objects, config.shape)  # first use of rng: `scene_of`
    video_id = f"syn{config.seed % 10000:04d}{clip_index:04d}"
    total = config.lead_frames + config.frames + config.tail_frames
    video_times = np.arange(total) / config.fps
    timestamps = np.round(video_times * 1e6).astype(np.int64)
    clip_slice = slice(config.lead_frames, config.lead_frames + config.frames)
    clip_times = video_times[clip_slice]
    clip_id = make_clip_id(video_id, int(timestamps[clip_slice][0]))
    fmt, frame_hw = synth_format(config)
    release_kind = StereoFormat(fov_bounds=fmt.fov_bounds)

    write_raw_video(
        out_dir,
        video_id,
        (render_stereo_frame(scene, t, fmt, frame_hw, config.supersample) for t in video_times),
        config,
        fmt,
    )
    views = [render_rectified(scene, t) for t in clip_times]
    gt = ground_truth_tracks(scene, clip_times, views, config.tracks, rng)
    c2w = np.stack([scene.camera2world(t) for t in clip_times]).astype(np.float32)
    sparse = ClipRecord.sparse_from_dense(gt["tracks_3d"], gt["visible"])
    record = ClipRecord(
        name=clip_id,
        video_id=video_id,
        timestamps=timestamps[clip_slice],
        camera2world=c2w,
        rectified2rig=scene.rectified2rig.astype(np.float32),
        fov_bounds=np.asarray(fmt.fov_bounds, np.float32),
        **sparse,
        # the release's own kind (side-by-side equirect) carries nothing the release does not
        extras={} if fmt == release_kind else {VIDEO_FORMAT_EXTRA: np.asarray(fmt.to_json())},
    )
    write_clip(record, fs.join(out_dir, "npz", f"{clip_id}.npz"))
    gt_arrays: dict[str, Any] = {  # Any: see write_clip
        "scene_seed": np.array([config.seed, clip_index]),
        "num_objects": np.array(config.num_objects),
        "scene_shape": config.shape.to_array(),
        "clip_times": clip_times,
        "depth": np.stack([v["depth"] for v in views]).astype(np.float16),
        "labels": np.stack([v["labels"] for v in views]),
        "object_ids": np.stack([v["object_ids"] for v in views]),
        "rgb": np.stack([v["rgb"] for v in views]),
        **gt,
    }
    with fs.open_atomic(fs.join(out_dir, "gt", f"{clip_id}.npz")) as f:
        np.savez_compressed(f, **gt_arrays)
    log.info(
        "synth: wrote clip %s (%d frames, %d tracks)", clip_id, config.frames, len(gt["visible"])
    )
    return clip_id


def synth_dataset(out_dir: str, config: SynthConfig) -> list[str]:
    """Render `config.clips` clips under `out_dir` (Stereo4D layout + gt/); return clip ids."""
    return [synth_clip(out_dir, config, i) for i in range(config.clips)]


def scene_of(ground_truth: dict[str, np.ndarray]) -> Scene:
    """Rebuild the exact scene of a synthetic clip from its ground truth (for evaluation)."""
    rng = np.random.default_rng(ground_truth["scene_seed"].tolist())
    shape = (
        SceneShape.from_array(ground_truth["scene_shape"])
        if "scene_shape" in ground_truth
        else None
    )
    return build_scene(rng, int(ground_truth["num_objects"]), shape)


def load_ground_truth(out_dir: str, clip_id: str) -> dict[str, np.ndarray]:
    """Ground truth arrays written by `synth_clip` for `clip_id` (depth as float32 m)."""
    data = fs.read_bytes(fs.join(out_dir, "gt", f"{clip_id}.npz"))
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["depth"] = arrays["depth"].astype(np.float32)
    return arrays
