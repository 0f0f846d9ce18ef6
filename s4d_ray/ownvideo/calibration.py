"""Stereo rig calibration of a VR180 video: the two eyes' `rectified2rig` rotations [2,3,3].

A rectified pair has both cameras in one orientation with the baseline on their x axis, so
every scene point lies in one epipolar plane through the x axis in both eyes: its elevation
about x, φ = atan2(y, z), is the same in the left and right rectified rays — the pair has zero
vertical disparity. Given matched rays of the raw eyes (rig frames), the rotations R_L, R_R
(rectified → rig; rectified ray = Rᵀ · rig ray) are solved so that φ_L = φ_R, robustly (scipy
`least_squares`, soft-L1), over correspondences pooled from many frames of the video. The
residual is ρ·Δφ·f (ρ = distance of the ray from the x axis, f the rectified focal length), about
the vertical disparity in pixels of the 512², 60° rectified view near its centre.

Identifiability: the relative rotation (3 DoF) and the baseline direction in the rig (2 DoF) are
fixed by the data; a rotation of both eyes about the baseline (x) changes nothing. That gauge is
set to the smallest common rotation (least Σ‖log R_eye‖²). Relative yaw (about y) shows only
in wide-angle rays (vertical disparity ∝ x·y/(y²+z²), largest in the corners of the field):
the eyes are matched over ±80° × ±70°, not just the 60° view, for that reason. Yaw is also
what sets the depth scale (a yaw δψ is a disparity offset f·δψ: 0.01° ≈ 4 % of scale at
10 m), so the matches that observe it must be unbiased: they are made on an epipolar grid
(rows are planes through the baseline, where a rectified pair's matches are pure horizontal
shifts whatever the depth), corners on straight edges are skipped (they slide along the edge:
the aperture problem), and matches inconsistent with a first solve are dropped before the
second (`solve_rotations`).

Rounds: remap both raw eyes onto the epipolar grid by the current rotations (identity at
first), match (Lucas–Kanade left→right, forward-backward checked), map back to rig rays, solve.
The result is stored per video as `OUTPUT/calibration/<video_id>.json` and reused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np
from scipy.optimize import least_squares, minimize_scalar
from scipy.spatial.transform import Rotation

from s4d_ray.errors import StageError
from s4d_ray.geometry.camera import (
    RECTIFIED_HFOV_DEG,
    RECTIFIED_SIZE,
    focal_length_px,
)
from s4d_ray.geometry.vr180 import (
    eye_box,
    eye_hw,
    eye_pixels_to_rays,
    rays_to_eye_pixels,
    rectify_map,
)
from s4d_ray.io import fs
from s4d_ray.io.stereo_format import StereoFormat, as_bounds
from s4d_ray.io.video import DecodeCount, sample_frames

log = logging.getLogger(__name__)

STAGE = "calibration"
CALIBRATION_VERSION = "ownvideo-calib-4"
LK_PARAMS: dict[str, Any] = {
    "winSize": (21, 21),
    "maxLevel": 3,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 0.003),
}


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration settings.

    frames: how many frames of the video are pooled (with biased matches removed the yaw
    error is noise: 12 frames left up to 0.009°, 36 at most 0.002° on ten synthetic scenes);
    corners: corners per frame; rounds: rectify → match → solve rounds after the first;
    max_lon_deg / max_lat_deg: the part of each eye matched, as the epipolar grid's α and φ
    half-ranges (`epipolar_rays`); min_eigen_ratio: corners on straight edges are not matched
    (`well_conditioned`); corner_cells: corners are sought per cell of a corner_cells²
    split, each against its own strongest (`spread_corners`); max_grid_px_per_deg: the
    epipolar grid's resolution at most (a 5.7K eye has 16 px/deg: matched at 8 after a blur,
    calibration took 13.5 s instead of 39 s and its rig error was 0.007° instead of 0.014°
    on a synthetic 5.7K video); trim_mads / trim_floor_px: which matches the second solve keeps
    (`consistent_matches`); fb_threshold_px: forward-backward LK tolerance; loss_scale_px:
    soft-L1 scale; min_matches / min_match_fraction: below these the halves are not a stereo
    pair; max_median_vertical_px: above this after solving the calibration is rejected;
    max_relative_rotation_deg: eyes rotated further apart than this are not a VR180 rig;
    max_field_scale_error: the field of view that best explains the matches over the whole
    field (`field_scale`) may be this fraction off the assumed one. Beyond it the video is
    refused when the frames agree (split into field_scale_groups groups, their estimates'
    standard deviation at most max_field_scale_spread: a wrong field is the same in every
    frame, measured 0.0007–0.003) or when the rig does not fit the matches either (median
    epipolar residual over max_unverified_residual_px: a fisheye read as equirect, 0.56 px,
    against 0.08–0.23 px for right geometry); frames that disagree only log a warning. A scene
    whose matches are consistently biased is refused too: one synthetic scene, right geometry,
    gave k = 0.939 and, kept, a scale 20.6 % off (with edge corners and inconsistent matches
    left out it gives k = 1.00);
    min_disparity_px: matches whose horizontal disparity in the rectified pair is beyond this
    count for the eye-order check (more behind than ahead: swapped eyes).
    """

    frames: int = 36
    corners: int = 2000
    rounds: int = 2
    max_lon_deg: float = 80.0
    max_lat_deg: float = 70.0
    fb_threshold_px: float = 0.5
    loss_scale_px: float = 0.5
    min_matches: int = 300
    min_match_fraction: float = 0.3
    max_median_vertical_px: float = 1.0
    max_relative_rotation_deg: float = 5.0
    max_field_scale_error: float = 0.03
    field_scale_groups: int = 4
    max_field_scale_spread: float = 0.01
    max_unverified_residual_px: float = 0.4
    min_disparity_px: float = 0.5
    min_eigen_ratio: float = 0.15
    trim_mads: float = 3.0
    trim_floor_px: float = 0.2
    corner_cells: int = 4
    max_grid_px_per_deg: float = 8.0


@dataclass
class Calibration:
    """A video's rig calibration and how well it holds.

    rectified2rig [2,3,3]; fov_bounds [4] deg; median_vertical_px: median |vertical disparity|
    (px) of sparse matches in the 512², 60° rectified pair after calibration; before_px: the same
    with identity rotations; matches: correspondences in the last solve; rounds_px: residual
    median (px) after each solve; field_scale: the factor on the assumed field of view
    that best explains the matches (1 when the geometry is right); field_scale_spread: its
    standard deviation over groups of frames (large: the estimate is not to be trusted, the
    check is skipped); video_format: the StereoFormat calibrated (JSON); sampling: how
    the frames were read ("keyframes" or "sequential", `io.video.sample_frames`).
    """

    video_id: str
    rectified2rig: np.ndarray
    fov_bounds: np.ndarray
    median_vertical_px: float
    before_px: float
    matches: int
    frames: int
    rounds_px: list[float] = field(default_factory=list)
    seconds: float = 0.0
    field_scale: float = 1.0
    field_scale_spread: float = 0.0
    video_format: dict = field(default_factory=dict)
    sampling: str = ""
    version: str = CALIBRATION_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["rectified2rig"] = np.asarray(self.rectified2rig, float).tolist()
        d["fov_bounds"] = np.asarray(self.fov_bounds, float).tolist()
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        d = json.loads(text)
        d["rectified2rig"] = np.asarray(d["rectified2rig"], np.float64).reshape(2, 3, 3)
        d["fov_bounds"] = np.asarray(d["fov_bounds"], np.float64).reshape(4)
        return cls(**d)


def working_bounds(fmt: StereoFormat) -> np.ndarray:
    """The eye's field [4] deg as equirect bounds (a fisheye's square field included),
    latitude clipped to ±90°: its pixels per degree are the epipolar grid's."""
    yaw0, yaw1, tilt0, tilt1 = np.asarray(fmt.fov_bounds, np.float64)
    return np.array([max(yaw0, -180.0), min(yaw1, 180.0), max(tilt0, -90.0), min(tilt1, 90.0)])


def as_grey(frame: np.ndarray) -> np.ndarray:
    """A raw frame as grey [H,W] uint8 (RGB [H,W,3] converted; grey passed through)."""
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def match_eyes(
    left: np.ndarray, right: np.ndarray, mask: np.ndarray, config: CalibrationConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """LK matches of corners of grey `left` into grey `right` (images [H,W] uint8).

    Returns (left px [M,2], right px [M,2], corners tried).
    """
    corners = spread_corners(left, mask, config.corners, config.corner_cells)
    if corners is None:
        return np.zeros((0, 2)), np.zeros((0, 2)), 0
    corners = corners[well_conditioned(left, corners.reshape(-1, 2), config.min_eigen_ratio)]
    fwd, ok_f, _ = cv2.calcOpticalFlowPyrLK(left, right, corners, corners.copy(), **LK_PARAMS)
    back, ok_b, _ = cv2.calcOpticalFlowPyrLK(right, left, fwd, corners.copy(), **LK_PARAMS)
    err = np.linalg.norm((back - corners).reshape(-1, 2), axis=1)
    ok = (ok_f.ravel() == 1) & (ok_b.ravel() == 1) & (err < config.fb_threshold_px)
    return (
        corners.reshape(-1, 2)[ok].astype(np.float64),
        fwd.reshape(-1, 2)[ok].astype(np.float64),
        len(corners),
    )


def spread_corners(grey: np.ndarray, mask: np.ndarray, count: int, cells: int) -> np.ndarray | None:
    """Up to `count` corners [M,1,2] float32 of `grey [H,W] uint8` within `mask`, found per
    cell of a cells × cells split, each cell's strength relative to its own strongest: the
    corners of the field, the only part that sees the eyes' relative yaw, keep their corners
    when a strongly textured object elsewhere sets the frame's maximum (one street kept no
    match at all beyond ±40°, ±35° with a single frame-wide threshold)."""
    h, w = grey.shape
    rows = np.linspace(0, h, cells + 1).astype(int)
    cols = np.linspace(0, w, cells + 1).astype(int)
    found = []
    for top, bottom in zip(rows[:-1], rows[1:], strict=True):
        for left, right in zip(cols[:-1], cols[1:], strict=True):
            cell_mask = mask[top:bottom, left:right]
            if not cell_mask.any():
                continue
            corners = cv2.goodFeaturesToTrack(
                grey[top:bottom, left:right],
                max(1, count // cells**2),
                0.005,
                7,
                mask=np.ascontiguousarray(cell_mask),
            )
            if corners is not None:
                found.append(corners + np.array([left, top], np.float32))
    return np.concatenate(found) if found else None


def well_conditioned(grey: np.ndarray, points: np.ndarray, min_ratio: float) -> np.ndarray:
    """Which `points [M,2]` px of `grey [H,W] uint8` [M] bool have a structure tensor over the
    LK window whose smaller eigenvalue is at least `min_ratio` of the larger: a point on a
    straight edge (ratio near 0) slides along it between the eyes, biasing its match across
    the edge — the aperture problem."""
    if points.size == 0:
        return np.zeros(0, bool)
    eig = cv2.cornerEigenValsAndVecs(grey, LK_PARAMS["winSize"][0], 3)
    h, w = grey.shape
    col = np.clip(np.round(points[:, 0]).astype(int), 0, w - 1)
    row = np.clip(np.round(points[:, 1]).astype(int), 0, h - 1)
    big, small = eig[row, col, 0], eig[row, col, 1]
    return small >= min_ratio * np.maximum(big, 1e-12)


def _rotations(params: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(params.reshape(2, 3)).as_matrix()


def epipolar_residuals(
    rectified2rig: np.ndarray, rays_left: np.ndarray, rays_right: np.ndarray
) -> np.ndarray:
    """ρ·(φ_L − φ_R)·f [M] px: vertical disparity of matched rig rays [M,3] in the rectified pair."""
    f = focal_length_px(RECTIFIED_SIZE, RECTIFIED_HFOV_DEG)
    rect_l = rays_left @ rectified2rig[0]  # Rᵀ r as rows: r @ R
    rect_r = rays_right @ rectified2rig[1]
    phi_l = np.arctan2(rect_l[:, 1], rect_l[:, 2])
    phi_r = np.arctan2(rect_r[:, 1], rect_r[:, 2])
    delta = np.angle(np.exp(1j * (phi_l - phi_r)))
    rho = 0.5 * (np.hypot(rect_l[:, 1], rect_l[:, 2]) + np.hypot(rect_r[:, 1], rect_r[:, 2]))
    return f * rho * delta


def smallest_gauge(rectified2rig: np.ndarray) -> np.ndarray:
    """The equivalent rotations (both eyes turned about x alike) with least Σ‖log R_eye‖²."""

    def cost(angle: float) -> float:
        gauge = Rotation.from_rotvec([angle, 0.0, 0.0]).as_matrix()
        return float(np.sum(Rotation.from_matrix(rectified2rig @ gauge).as_rotvec() ** 2))

    best = minimize_scalar(cost, bounds=(-0.5, 0.5), method="bounded", options={"xatol": 1e-10})
    gauge = Rotation.from_rotvec([best.x, 0.0, 0.0]).as_matrix()
    return rectified2rig @ gauge


def solve_rotations(
    rays_left: np.ndarray,
    rays_right: np.ndarray,
    initial: np.ndarray,
    config: CalibrationConfig,
    trim: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust solve of rectified2rig [2,3,3] from matched rig rays [M,3]; (rotations,
    residuals px [M] of every match). With `trim`, solved a second time without the matches
    the first solve finds inconsistent (`consistent_matches`): soft-L1 alone lets a few
    hundred wrong matches in the periphery — the only part that sees the eyes' relative yaw —
    pull that yaw by 0.01–0.07°, i.e. the depth scale by 5–20 %."""
    x0 = Rotation.from_matrix(initial).as_rotvec().ravel()
    used_left, used_right = rays_left, rays_right

    def fun(params: np.ndarray) -> np.ndarray:
        res = epipolar_residuals(_rotations(params), used_left, used_right)
        # the data cannot see a common rotation about x: pin it (any weight; removed below)
        return np.append(res, 100.0 * (params[0] + params[3]))

    def solve(start: np.ndarray) -> np.ndarray:
        scale = config.loss_scale_px
        return least_squares(fun, start, loss="soft_l1", f_scale=scale, x_scale=1e-3).x

    params = solve(x0)
    if trim:
        residuals = epipolar_residuals(_rotations(params), rays_left, rays_right)
        keep = consistent_matches(residuals, config)
        used_left, used_right = rays_left[keep], rays_right[keep]
        params = solve(params)
    rotations = smallest_gauge(_rotations(params))
    return rotations, epipolar_residuals(rotations, rays_left, rays_right)


def consistent_matches(residuals: np.ndarray, config: CalibrationConfig) -> np.ndarray:
    """Which matches [M] bool agree with the rig: |residual| px within `trim_mads` robust
    standard deviations (1.4826 · median), and always within `trim_floor_px`."""
    res = np.abs(residuals)
    return res <= max(config.trim_mads * 1.4826 * float(np.median(res)), config.trim_floor_px)


def relative_rotation_deg(rectified2rig: np.ndarray) -> float:
    """Angle (deg) between the two eyes' rotations."""
    rel = Rotation.from_matrix(rectified2rig[0] @ rectified2rig[1].T)
    return float(np.degrees(np.linalg.norm(rel.as_rotvec())))


def vertical_disparity_px(
    frames: list[np.ndarray],
    rectified2rig: np.ndarray,
    fmt: StereoFormat,
    corners: int = 1000,
) -> np.ndarray:
    """|v_L − v_R| px [M] of LK matches in the 512², 60° rectified pairs of raw `frames`."""
    return np.abs(rectified_disparities(frames, rectified2rig, fmt, corners)[:, 1])


def rectified_disparities(
    frames: list[np.ndarray],
    rectified2rig: np.ndarray,
    fmt: StereoFormat,
    corners: int = 1000,
) -> np.ndarray:
    """(x_L − x_R, v_L − v_R) px [M,2] of LK matches in the 512², 60° rectified pairs of raw
    `frames`: the first is ≥ 0 for a rig whose eyes are where `fmt` says (a point is further
    right in the left eye), the second 0 for a calibrated one."""
    out = []
    config = CalibrationConfig(corners=corners)
    if not frames:
        return np.zeros((0, 2))
    frame_hw = frames[0].shape[:2]
    maps = [rectify_map(fmt, e, rectified2rig[e], frame_hw) for e in range(2)]
    for frame in frames:
        grey = as_grey(frame)
        rect = [
            cv2.remap(grey, m[0], m[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            for m in maps
        ]
        inner = np.zeros_like(rect[0])
        inner[16:-16, 16:-16] = 255
        p_l, p_r, _ = match_eyes(rect[0], rect[1], inner, config)
        out.append(p_l - p_r)
    return np.concatenate(out) if out else np.zeros((0, 2))


def epipolar_rays(
    uv: np.ndarray, half_deg: tuple[float, float], grid_hw: tuple[int, int]
) -> np.ndarray:
    """Unit rays [...,3] of pixels `uv [...,2]` of an epipolar grid: column = angle α from the
    y–z plane towards the baseline (x), row = φ, the rotation about x; α ∈ ±half_deg[0],
    φ ∈ ±half_deg[1]. In a rectified pair a point has one φ in both eyes, so its match is a
    pure row-preserving shift: depth edges cannot bias the vertical match."""
    a0, p0 = np.radians(half_deg[0]), np.radians(half_deg[1])
    alpha = -a0 + uv[..., 0] / (grid_hw[1] - 1) * 2 * a0
    phi = -p0 + uv[..., 1] / (grid_hw[0] - 1) * 2 * p0
    return np.stack([np.sin(alpha), np.cos(alpha) * np.sin(phi), np.cos(alpha) * np.cos(phi)], -1)


def _match_round(
    frames: list[np.ndarray],
    rectified2rig: np.ndarray,
    fmt: StereoFormat,
    config: CalibrationConfig,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Matched rig rays (left [M,3], right [M,3]) of all frames, matched on an epipolar
    working grid (rows: planes through the baseline) over ±max_lon × ±max_lat, rectified by
    `rectified2rig` (one remap of the raw frame per eye, any layout or projection); plus
    corners tried and matches kept."""
    pieces_l, pieces_r = [], []
    tried = 0
    frame_hw = frames[0].shape[:2]
    part_hw = eye_hw(fmt, frame_hw)
    bounds = working_bounds(fmt)
    source_px_per_deg = part_hw[1] / (bounds[1] - bounds[0])
    px_per_deg = min(source_px_per_deg, config.max_grid_px_per_deg)
    # sampled below the source's resolution: blurred first, against aliasing
    blur_sigma = 0.5 * source_px_per_deg / px_per_deg if source_px_per_deg > px_per_deg else 0.0
    half = (config.max_lon_deg, config.max_lat_deg)
    grid_hw = (int(round(2 * half[1] * px_per_deg)), int(round(2 * half[0] * px_per_deg)))
    v, u = np.mgrid[0 : grid_hw[0], 0 : grid_hw[1]].astype(np.float64)
    grid_rays = epipolar_rays(np.stack([u, v], -1), half, grid_hw)
    maps = [rays_to_eye_pixels(grid_rays @ rectified2rig[e].T, fmt, e, frame_hw) for e in range(2)]
    seen = (maps[0][0] >= 0) & (maps[1][0] >= 0)
    margin = LK_PARAMS["winSize"][0]
    mask = (cv2.erode(seen.astype(np.uint8), np.ones((margin, margin), np.uint8)) > 0).astype(
        np.uint8
    ) * 255
    for frame in frames:
        grey = as_grey(frame)
        if blur_sigma:
            grey = cv2.GaussianBlur(grey, (0, 0), blur_sigma)
        rect = [
            cv2.remap(grey, m[0], m[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            for m in maps
        ]
        p_l, p_r, n = match_eyes(rect[0], rect[1], mask, config)
        tried += n
        # a working-grid pixel's ray is in the rectified frame: rig ray = R · ray
        pieces_l.append(epipolar_rays(p_l, half, grid_hw) @ rectified2rig[0].T)
        pieces_r.append(epipolar_rays(p_r, half, grid_hw) @ rectified2rig[1].T)
    rays_l = np.concatenate(pieces_l) if pieces_l else np.zeros((0, 3))
    rays_r = np.concatenate(pieces_r) if pieces_r else np.zeros((0, 3))
    return rays_l, rays_r, tried, len(rays_l)


def _eye_local_pixels(
    rays: np.ndarray, fmt: StereoFormat, eye: int, frame_hw: tuple[int, int]
) -> np.ndarray:
    """Raw pixels [M,2] in the eye's own part of rig rays [M,3] (−1 outside the field)."""
    u, v = rays_to_eye_pixels(rays, fmt, eye, frame_hw)
    top, left = eye_box(fmt, eye, frame_hw)[:2]
    inside = u >= 0
    return np.stack([np.where(inside, u - left, -1), np.where(inside, v - top, -1)], 1)


def field_scale(
    rays_left: np.ndarray,
    rays_right: np.ndarray,
    rectified2rig: np.ndarray,
    fmt: StereoFormat,
    frame_hw: tuple[int, int],
    config: CalibrationConfig,
) -> float:
    """The factor k on the field of view (both axes) that best explains matched rig rays
    [M,3] (consistent ones: the set stays fixed while k varies): the raw pixels the matches
    came from are re-read as a field k times as wide and the rotations re-solved; k minimises
    the mean residual, measured in raw pixels (an angle shrinks with the field it is read in:
    in angles every k < 1 would look better). A wrong field shows as vertical
    disparity that grows with the horizontal disparity and the angle off-centre, which only
    the wide field sees (the central 60° view does not)."""
    pixels = [_eye_local_pixels(r, fmt, e, frame_hw) for e, r in enumerate((rays_left, rays_right))]
    ok = (pixels[0][:, 0] >= 0) & (pixels[1][:, 0] >= 0)
    part_hw = eye_hw(fmt, frame_hw)

    def cost(k: float) -> float:
        scaled = replace(fmt, fov_bounds=as_bounds(np.multiply(fmt.fov_bounds, k)))
        rays = [eye_pixels_to_rays(p[ok], scaled, e, part_hw)[0] for e, p in enumerate(pixels)]
        _, residuals = solve_rotations(rays[0], rays[1], rectified2rig, config, trim=False)
        # in the raw image's own units: a field k times as wide has every angle k times larger
        return float(np.mean(np.abs(residuals) / k))

    best = minimize_scalar(cost, bounds=(0.8, 1.2), method="bounded", options={"xatol": 1e-3})
    return float(best.x)


def calibrate_frames(
    frames: list[np.ndarray],
    video_id: str,
    config: CalibrationConfig | None = None,
    fmt: StereoFormat | None = None,
) -> Calibration:
    """Calibrate from raw stereo frames [H,W,3] or grey [H,W] uint8 of one video packed as
    `fmt` (default: side-by-side 180° equirect).

    Raises StageError(video_id, 'calibration', why) when the halves do not match as a stereo
    pair (mono video, no texture) or the solved rig is implausible.
    """
    import time

    config = config or CalibrationConfig()
    start = time.perf_counter()
    if not frames:
        raise StageError(video_id, STAGE, "no frames to calibrate from")
    fmt = fmt or StereoFormat()
    rotations = np.stack([np.eye(3), np.eye(3)])
    before = vertical_disparity_px(frames[:3], rotations, fmt, corners=500)
    rounds_px: list[float] = []
    matches = 0
    for round_index in range(config.rounds + 1):
        rays_l, rays_r, tried, matches = _match_round(frames, rotations, fmt, config)
        if matches < config.min_matches or matches < config.min_match_fraction * tried:
            raise StageError(
                video_id,
                STAGE,
                f"the left and right halves do not match as a stereo pair: {matches} of {tried} "
                f"corners matched over {len(frames)} frames (need >= {config.min_matches} and "
                f">= {config.min_match_fraction:.0%}); a mono or non-SBS video, or no texture",
            )
        rotations, residuals = solve_rotations(rays_l, rays_r, rotations, config)
        rounds_px.append(float(np.median(np.abs(residuals))))
        log.info(
            "calibration %s round %d: %d matches, median residual %.3f px",
            video_id,
            round_index,
            matches,
            rounds_px[-1],
        )
    relative = relative_rotation_deg(rotations)
    frame_hw = frames[0].shape[:2]
    inliers = consistent_matches(residuals, config)
    scale = field_scale(rays_l[inliers], rays_r[inliers], rotations, fmt, frame_hw, config)
    spread = 0.0
    off = abs(scale - 1.0)
    if off > config.max_field_scale_error:
        groups = []
        for g in range(min(config.field_scale_groups, len(frames))):
            group = _match_round(frames[g :: config.field_scale_groups], rotations, fmt, config)
            kept = consistent_matches(epipolar_residuals(rotations, *group[:2]), config)
            groups.append(
                field_scale(group[0][kept], group[1][kept], rotations, fmt, frame_hw, config)
            )
        spread = float(np.std(groups))
        log.info("calibration %s: field scale %.4f, per frame group %s", video_id, scale, groups)
    misfit = rounds_px[-1] > config.max_unverified_residual_px
    consistent = spread <= config.max_field_scale_spread
    if off > config.max_field_scale_error and (misfit or consistent):
        yaw, tilt = fmt.fov_bounds[1] - fmt.fov_bounds[0], fmt.fov_bounds[3] - fmt.fov_bounds[2]
        why = (
            f"median epipolar residual {rounds_px[-1]:.2f} px"
            if misfit
            else f"every group of frames agrees within {spread:.3f}"
        )
        raise StageError(
            video_id,
            STAGE,
            f"wrong geometry: the matches over the whole field fit a field of view {scale:.3f} "
            f"times the one assumed ({fmt.describe()}; projection from "
            f"{fmt.sources.get('projection', 'default')}, field from "
            f"{fmt.sources.get('fov_bounds', 'default')}), i.e. about {yaw * scale:.0f}°×"
            f"{tilt * scale:.0f}° ({why}; max {config.max_field_scale_error:.0%} off). A "
            "fisheye read as equirect, or an equirect whose bounds differ: describe the video "
            "in a sidecar <video file>.s4d.json (projection, fov_deg or fov_bounds); if the "
            "geometry is right, the matches are biased and the depth scale would be too",
        )
    if off > config.max_field_scale_error:
        log.warning(
            "calibration %s: the field of view could not be verified: the matches fit %.3f "
            "times the one assumed, but frame groups disagree by %.3f; kept",
            video_id,
            scale,
            spread,
        )
    disparities = rectified_disparities(frames, rotations, fmt, corners=1000)
    after = np.abs(disparities[:, 1])
    median_after = float(np.median(after)) if after.size else float("nan")
    behind = float(np.mean(disparities[:, 0] < -config.min_disparity_px)) if after.size else 0.0
    ahead = float(np.mean(disparities[:, 0] > config.min_disparity_px)) if after.size else 0.0
    if behind > max(ahead, 0.2):
        raise StageError(
            video_id,
            STAGE,
            f"the eyes look swapped: {behind:.0%} of the matches in the rectified pair lie "
            f"further left in the left eye than in the right (a point seen by the left eye of a "
            f"rig is further right), {ahead:.0%} further right; the layout is "
            f"{fmt.layout} (from {fmt.sources.get('layout', 'default')}): if the right eye is "
            f"stored {'left' if fmt.layout == 'left-right' else 'first'}, say so in a sidecar "
            "<video file>.s4d.json (layout: right-left or bottom-top)",
        )
    if (
        relative > config.max_relative_rotation_deg
        or not median_after <= config.max_median_vertical_px
    ):
        raise StageError(
            video_id,
            STAGE,
            f"calibration not trustworthy: eyes {relative:.2f} deg apart (max "
            f"{config.max_relative_rotation_deg}), median vertical disparity {median_after:.3f} px "
            f"after calibration (max {config.max_median_vertical_px}) from {matches} matches",
        )
    return Calibration(
        video_id=video_id,
        rectified2rig=rotations,
        fov_bounds=np.asarray(fmt.fov_bounds, np.float64),
        median_vertical_px=median_after,
        before_px=float(np.median(before)) if before.size else float("nan"),
        matches=int(matches),
        frames=len(frames),
        rounds_px=rounds_px,
        seconds=time.perf_counter() - start,
        field_scale=scale,
        field_scale_spread=spread,
        video_format=fmt.to_json_dict(),
    )


def calibration_uri(output_uri: str, video_id: str) -> str:
    """Where a video's calibration is stored: `OUTPUT/calibration/<video_id>.json`."""
    return fs.join(output_uri, "calibration", f"{video_id}.json")


def calibrate_video(
    video_uri: str,
    video_id: str,
    output_uri: str | None = None,
    config: CalibrationConfig | None = None,
    fmt: StereoFormat | None = None,
    tally: DecodeCount | None = None,
) -> Calibration:
    """Calibration of a video packed as `fmt`, from `config.frames` grey frames spread over the
    whole video (`io.video.sample_frames`: its keyframes, each decoded on its own, so the
    calibration is known before the video's one sequential pass starts and every clip is
    rectified with it; many scenes pin the rig better than one shot). Decodes are counted in
    `tally`.

    With `output_uri`, a stored `calibration/<video_id>.json` of the same format is reused,
    else written.
    """
    fmt = fmt or StereoFormat()
    config = config or CalibrationConfig()
    target = calibration_uri(output_uri, video_id) if output_uri else None
    if target and fs.exists(target):
        stored = Calibration.from_json(fs.read_bytes(target).decode())
        if stored.version == CALIBRATION_VERSION and (
            StereoFormat.from_json_dict(stored.video_format) == fmt
        ):
            return stored
    frames, sampling = sample_frames(video_uri, config.frames, video_id, STAGE, tally)
    calibration = calibrate_frames(frames, video_id, config, fmt)
    calibration.sampling = sampling
    if target:
        fs.write_bytes(target, calibration.to_json().encode())
    return calibration
