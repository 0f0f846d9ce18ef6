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
in wide-angle rays (second order in the angle off-centre): the raw equirect eyes are matched
over ±80° of longitude, not just the 60° view, for that reason.

Rounds: match the raw equirect eyes (Lucas–Kanade left→right, forward-backward checked), solve;
then rectify both eyes (full equirect remap by the current rotations), match again in the
rectified domain — where matches are purely horizontal shifts — map back to rig rays, re-solve.
The result is stored per video as `OUTPUT/calibration/<video_id>.json` and reused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from scipy.optimize import least_squares, minimize_scalar
from scipy.spatial.transform import Rotation

from s4d_ray.errors import StageError
from s4d_ray.geometry.camera import (
    RECTIFIED_HFOV_DEG,
    RECTIFIED_SIZE,
    composed_rectify_map,
    equirect_rectification_map,
    focal_length_px,
)
from s4d_ray.io import fs
from s4d_ray.io.video import decode_frames_at

log = logging.getLogger(__name__)

STAGE = "calibration"
CALIBRATION_VERSION = "ownvideo-calib-1"
LK_PARAMS = {
    "winSize": (21, 21),
    "maxLevel": 3,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 0.003),
}


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration settings.

    frames: how many frames of the video are pooled; corners: corners per frame; rounds:
    rectify → match → solve rounds after the raw-equirect one; max_lon_deg / max_lat_deg: the
    part of each eye matched; fb_threshold_px: forward-backward LK tolerance; loss_scale_px:
    soft-L1 scale; min_matches / min_match_fraction: below these the halves are not a stereo
    pair; max_median_vertical_px: above this after solving the calibration is rejected;
    max_relative_rotation_deg: eyes rotated further apart than this are not a VR180 rig.
    """

    frames: int = 12
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


@dataclass
class Calibration:
    """A video's rig calibration and how well it holds.

    rectified2rig [2,3,3]; fov_bounds [4] deg; median_vertical_px: median |vertical disparity|
    (px) of sparse matches in the 512², 60° rectified pair after calibration; before_px: the same
    with identity rotations; matches: correspondences in the last solve; rounds_px: residual
    median (px) after each solve.
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


def fov_bounds_of(eye_hw: tuple[int, int]) -> np.ndarray:
    """fov_bounds [4] deg of an equirect eye of `eye_hw`: 180° tall, equal degrees per pixel
    horizontally (a square VR180 eye: [-90, 90, -90, 90])."""
    height, width = eye_hw
    half_yaw = 90.0 * width / height
    return np.array([-half_yaw, half_yaw, -90.0, 90.0])


def pixels_to_rays(uv: np.ndarray, fov_bounds: np.ndarray, eye_hw: tuple[int, int]) -> np.ndarray:
    """Unit rays [M,3] of equirect pixels `uv [M,2]` (inverse of `rays_to_equirect`)."""
    yaw0, yaw1, tilt0, tilt1 = np.radians(np.asarray(fov_bounds, np.float64))
    lon = yaw0 + uv[:, 0] / (eye_hw[1] - 1) * (yaw1 - yaw0)
    lat = tilt0 + uv[:, 1] / (eye_hw[0] - 1) * (tilt1 - tilt0)
    return np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], axis=1)


def match_eyes(
    left: np.ndarray, right: np.ndarray, mask: np.ndarray, config: CalibrationConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """LK matches of corners of grey `left` into grey `right` (images [H,W] uint8).

    Returns (left px [M,2], right px [M,2], corners tried).
    """
    corners = cv2.goodFeaturesToTrack(left, config.corners, 0.005, 7, mask=mask)
    if corners is None:
        return np.zeros((0, 2)), np.zeros((0, 2)), 0
    fwd, ok_f, _ = cv2.calcOpticalFlowPyrLK(left, right, corners, corners.copy(), **LK_PARAMS)
    back, ok_b, _ = cv2.calcOpticalFlowPyrLK(right, left, fwd, corners.copy(), **LK_PARAMS)
    err = np.linalg.norm((back - corners).reshape(-1, 2), axis=1)
    ok = (ok_f.ravel() == 1) & (ok_b.ravel() == 1) & (err < config.fb_threshold_px)
    return (
        corners.reshape(-1, 2)[ok].astype(np.float64),
        fwd.reshape(-1, 2)[ok].astype(np.float64),
        len(corners),
    )


def _eye_mask(
    eye_hw: tuple[int, int], fov_bounds: np.ndarray, config: CalibrationConfig
) -> np.ndarray:
    yaw0, yaw1, tilt0, tilt1 = np.asarray(fov_bounds, np.float64)
    lon = np.linspace(yaw0, yaw1, eye_hw[1])
    lat = np.linspace(tilt0, tilt1, eye_hw[0])
    ok = (np.abs(lat)[:, None] <= config.max_lat_deg) & (np.abs(lon)[None, :] <= config.max_lon_deg)
    return ok.astype(np.uint8) * 255


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
    loss_scale_px: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust solve of rectified2rig [2,3,3] from matched rig rays [M,3]; (rotations, residuals px)."""
    x0 = Rotation.from_matrix(initial).as_rotvec().ravel()

    def fun(params: np.ndarray) -> np.ndarray:
        res = epipolar_residuals(_rotations(params), rays_left, rays_right)
        # the data cannot see a common rotation about x: pin it (any weight; removed below)
        return np.append(res, 100.0 * (params[0] + params[3]))

    result = least_squares(fun, x0, loss="soft_l1", f_scale=loss_scale_px, x_scale=1e-3)
    rotations = smallest_gauge(_rotations(result.x))
    return rotations, epipolar_residuals(rotations, rays_left, rays_right)


def relative_rotation_deg(rectified2rig: np.ndarray) -> float:
    """Angle (deg) between the two eyes' rotations."""
    rel = Rotation.from_matrix(rectified2rig[0] @ rectified2rig[1].T)
    return float(np.degrees(np.linalg.norm(rel.as_rotvec())))


def _grey_eyes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = frame.shape[1] // 2
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return grey[:, :width], grey[:, width:]


def vertical_disparity_px(
    frames: list[np.ndarray], rectified2rig: np.ndarray, fov_bounds: np.ndarray, corners: int = 1000
) -> np.ndarray:
    """|v_L − v_R| px [M] of LK matches in the 512², 60° rectified pairs of raw SBS `frames`."""
    out = []
    config = CalibrationConfig(corners=corners)
    if not frames:
        return np.zeros(0)
    eye_hw = (frames[0].shape[0], frames[0].shape[1] // 2)
    maps = [composed_rectify_map(rectified2rig[e], fov_bounds, eye_hw) for e in range(2)]
    for frame in frames:
        left, right = _grey_eyes(frame)
        rect = [
            cv2.remap(img, m[0], m[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            for img, m in zip((left, right), maps, strict=True)
        ]
        inner = np.zeros_like(rect[0])
        inner[16:-16, 16:-16] = 255
        p_l, p_r, _ = match_eyes(rect[0], rect[1], inner, config)
        out.append(np.abs(p_l[:, 1] - p_r[:, 1]))
    return np.concatenate(out) if out else np.zeros(0)


def _match_round(
    frames: list[np.ndarray],
    rectified2rig: np.ndarray,
    fov_bounds: np.ndarray,
    config: CalibrationConfig,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Matched rig rays (left [M,3], right [M,3]) of all frames, matched in the equirect eyes
    rectified by `rectified2rig`; plus corners tried and matches kept."""
    rays_l, rays_r = [], []
    tried = 0
    eye_hw = (frames[0].shape[0], frames[0].shape[1] // 2)
    mask = _eye_mask(eye_hw, fov_bounds, config)
    maps = [equirect_rectification_map(rectified2rig[e], fov_bounds, eye_hw) for e in range(2)]
    for frame in frames:
        left, right = _grey_eyes(frame)
        rect = [
            cv2.remap(img, m[0], m[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            for img, m in zip((left, right), maps, strict=True)
        ]
        p_l, p_r, n = match_eyes(rect[0], rect[1], mask, config)
        tried += n
        # a rectified-equirect pixel's ray is in the rectified frame: rig ray = R · ray
        rays_l.append(pixels_to_rays(p_l, fov_bounds, eye_hw) @ rectified2rig[0].T)
        rays_r.append(pixels_to_rays(p_r, fov_bounds, eye_hw) @ rectified2rig[1].T)
    rays_l = np.concatenate(rays_l) if rays_l else np.zeros((0, 3))
    rays_r = np.concatenate(rays_r) if rays_r else np.zeros((0, 3))
    return rays_l, rays_r, tried, len(rays_l)


def calibrate_frames(
    frames: list[np.ndarray], video_id: str, config: CalibrationConfig | None = None
) -> Calibration:
    """Calibrate from raw SBS equirect frames [H,2W,3] uint8 of one video.

    Raises StageError(video_id, 'calibration', why) when the halves do not match as a stereo
    pair (mono video, no texture) or the solved rig is implausible.
    """
    import time

    config = config or CalibrationConfig()
    start = time.perf_counter()
    if not frames:
        raise StageError(video_id, STAGE, "no frames to calibrate from")
    eye_hw = (frames[0].shape[0], frames[0].shape[1] // 2)
    fov = fov_bounds_of(eye_hw)
    rotations = np.stack([np.eye(3), np.eye(3)])
    before = vertical_disparity_px(frames[:3], rotations, fov, corners=500)
    rounds_px: list[float] = []
    matches = 0
    for round_index in range(config.rounds + 1):
        rays_l, rays_r, tried, matches = _match_round(frames, rotations, fov, config)
        if matches < config.min_matches or matches < config.min_match_fraction * tried:
            raise StageError(
                video_id,
                STAGE,
                f"the left and right halves do not match as a stereo pair: {matches} of {tried} "
                f"corners matched over {len(frames)} frames (need >= {config.min_matches} and "
                f">= {config.min_match_fraction:.0%}); a mono or non-SBS video, or no texture",
            )
        rotations, residuals = solve_rotations(rays_l, rays_r, rotations, config.loss_scale_px)
        rounds_px.append(float(np.median(np.abs(residuals))))
        log.info(
            "calibration %s round %d: %d matches, median residual %.3f px",
            video_id,
            round_index,
            matches,
            rounds_px[-1],
        )
    relative = relative_rotation_deg(rotations)
    after = vertical_disparity_px(frames, rotations, fov, corners=1000)
    median_after = float(np.median(after)) if after.size else float("nan")
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
        fov_bounds=fov,
        median_vertical_px=median_after,
        before_px=float(np.median(before)) if before.size else float("nan"),
        matches=int(matches),
        frames=len(frames),
        rounds_px=rounds_px,
        seconds=time.perf_counter() - start,
    )


def sample_timestamps(timestamps: np.ndarray, count: int) -> np.ndarray:
    """`count` timestamps [≤count] int64 spread evenly over `timestamps` (sorted, unique)."""
    timestamps = np.unique(np.asarray(timestamps, np.int64))
    if timestamps.size <= count:
        return timestamps
    return timestamps[np.round(np.linspace(0, timestamps.size - 1, count)).astype(int)]


def calibration_uri(output_uri: str, video_id: str) -> str:
    """Where a video's calibration is stored: `OUTPUT/calibration/<video_id>.json`."""
    return fs.join(output_uri, "calibration", f"{video_id}.json")


def calibrate_video(
    video_uri: str,
    video_id: str,
    timestamps: np.ndarray,
    output_uri: str | None = None,
    config: CalibrationConfig | None = None,
) -> Calibration:
    """Calibration of a video, from `config.frames` of its `timestamps` (µs, e.g. its clips').

    With `output_uri`, a stored `calibration/<video_id>.json` is reused, else written.
    """
    config = config or CalibrationConfig()
    target = calibration_uri(output_uri, video_id) if output_uri else None
    if target and fs.exists(target):
        stored = Calibration.from_json(fs.read_bytes(target).decode())
        if stored.version == CALIBRATION_VERSION:
            return stored
    wanted = sample_timestamps(timestamps, config.frames)
    frames = list(decode_frames_at(video_uri, wanted, video_id, STAGE))
    calibration = calibrate_frames(frames, video_id, config)
    if target:
        fs.write_bytes(target, calibration.to_json().encode())
    return calibration
