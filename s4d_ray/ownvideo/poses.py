"""Metric camera trajectory of a rectified stereo clip: sparse tracks, stereo, PnP, bundle adjustment.

World = the first frame's rectified left camera; metres (the 0.063 m baseline sets the scale).

1. Sparse tracks: corners of the left eye tracked frame to frame with pyramidal Lucas–Kanade,
   forward-backward checked, then refined against the track's first frame (the frame-to-frame
   position is the guess), so errors do not accumulate: chained frame to frame, a track drifted
   0.5–0.8 px from its point over 15–40 frames on synthetic streets, and far points' tracks,
   which alone carry little parallax, bent the trajectory (1.2–1.5 % of scale with the true
   rig); a track whose refinement fails ends. Topped up with new corners as tracks end (no
   dense grid: a few thousand points pin six numbers per frame). With segmentation labels,
   points on ADE20K classes that move (people, vehicles, animals) are never used, nor sky.
2. Stereo: each tracked point is matched into the right eye (LK, forward-backward, |Δy| ≤ 1 px
   on a rectified pair) — disparity, hence metric depth f·b/d, at sub-pixel precision.
3. Initialisation: frame by frame, PnP-RANSAC (`cv2.solvePnPRansac`) of the tracks' 3D points
   (stereo, in the world through the poses already found) against the new frame's 2D points.
   Points that RANSAC keeps rejecting are movers and are dropped.
4. Bundle adjustment of all frames and points (Levenberg–Marquardt with the points eliminated
   by the Schur complement, analytic Jacobian, Huber loss): left-eye reprojection plus the
   stereo term — reprojection into the right eye, the left camera shifted by the baseline.
   Between solves, points whose residuals say they move are dropped, and so are stereo
   matches that disagree with the solved depth (windows across a depth edge).
   Optionally (`solve_right_eye`, off by default) a small right-eye rotation is solved too;
   measured on synthetic clips, its yaw trades against the scale (a 0.006° yaw moved the scale
   by 1.4 %), so the calibration's rig is kept fixed.
A clip whose poses cannot be trusted (too few static points or inliers in some frame, a high
residual) raises StageError with the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import scipy.linalg
from scipy.spatial.transform import Rotation
from threadpoolctl import threadpool_limits

from s4d_ray.errors import StageError
from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, STEREO_BASELINE_M, intrinsics
from s4d_ray.track.ade20k import LABEL_NAMES

STAGE = "poses"

DYNAMIC_LABEL_NAMES = (
    "sky", "person", "car", "bus", "truck", "van", "bicycle", "minibike", "animal", "boat",
    "ship", "airplane", "plaything", "ball",
)  # fmt: skip
DYNAMIC_LABELS = tuple(LABEL_NAMES.index(name) for name in DYNAMIC_LABEL_NAMES)
"""ADE20K classes never used for poses: things that move by themselves, and the sky."""

LK_PARAMS = {
    "winSize": (15, 15),
    "maxLevel": 3,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.01),
}
"""Frame-to-frame tracking."""
STEREO_LK_PARAMS = {**LK_PARAMS, "winSize": (31, 31)}
"""Left → right matching: disparity errors become scale errors, and small windows on blurry
(upsampled) views bias the disparity up — the scale down (synthetic 512-line videos, true rig:
−12.6 % with 15², −8.9 % with 21², −4.5 % with 31² windows)."""


@dataclass(frozen=True)
class PoseConfig:
    """Pose estimation settings.

    corners: target number of live tracks; corner_quality: a corner's strength relative to
    the frame's strongest (low: strongly textured movers must not crowd out the static
    scene's corners — at 0.01, two of five synthetic streets with large movers kept 21–22
    inliers in their first frame, under min_frame_inliers); min_distance_px: corner spacing; fb_threshold_px:
    LK forward-backward tolerance (tracking and stereo); max_stereo_dy_px: vertical disparity
    allowed on the rectified pair; min_disparity_px: the initialisation takes depth only from
    larger disparities (nearer than f·b/d), while the bundle uses every stereo match down to
    stereo_floor_px (noise around zero disparity included: cutting it would bias far points
    near, i.e. the scale low); pnp_threshold_px: RANSAC reprojection tolerance; max_points: points in
    the bundle adjustment (longest tracks first); huber_px: robust loss scale; prune_px: a
    point whose median residual after a solve is over this is dropped as moving before the
    next (static points' medians are ~0.25 px once tracks are refined against their first
    frame; at 2 px, a street whose movers fill 64 % of the view kept 36 mover points and was
    1.9 % off in scale); inlier_px: a residual under this counts as an inlier (trust figures);
    anchor_max_px: a track whose refinement against its first frame moves it more than this
    from the frame-to-frame estimate ends; max_disparity_error_px: a stereo match the solved
    points and poses miss by more than this is dropped before the next solve (its left
    observation kept); min_points / min_frame_inliers / max_rms_px /
    min_inlier_fraction: trust thresholds; solve_right_eye: also solve the right eye's residual
    rotation; right_eye_prior_deg: its prior width.
    """

    corners: int = 1500
    corner_quality: float = 0.001
    min_distance_px: int = 10
    border_px: int = 8
    fb_threshold_px: float = 0.5
    max_stereo_dy_px: float = 1.0
    min_disparity_px: float = 0.5
    stereo_floor_px: float = -1.0
    pnp_threshold_px: float = 1.5
    max_points: int = 1200
    huber_px: float = 0.5
    prune_px: float = 1.0
    inlier_px: float = 2.0
    anchor_max_px: float = 2.0
    max_disparity_error_px: float = 0.5
    min_points: int = 60
    min_frame_inliers: int = 25
    max_rms_px: float = 1.0
    min_inlier_fraction: float = 0.6
    solve_right_eye: bool = False
    right_eye_prior_deg: float = 0.2
    baseline_m: float = STEREO_BASELINE_M
    hfov_deg: float = RECTIFIED_HFOV_DEG


@dataclass
class PoseResult:
    """Estimated trajectory and how well it holds.

    camera2world [T,3,4] (world = first rectified left camera, metres); points [P,3] world
    static points used; right_eye_rotation [3,3] the right eye's residual rotation (identity
    when not solved); rms_px: RMS of inlier residuals; inlier_fraction; min_frame_inliers: the
    fewest inlier points any frame has; seconds: per step timings.
    """

    camera2world: np.ndarray
    points: np.ndarray
    right_eye_rotation: np.ndarray
    rms_px: float
    inlier_fraction: float
    min_frame_inliers: int
    num_points: int
    seconds: dict[str, float] = field(default_factory=dict)
    iterations: list[int] = field(default_factory=list)


def _grey(frames: np.ndarray) -> list[np.ndarray]:
    """Frames [T,S,S,3] RGB or [T,S,S] grey as grey images."""
    return [f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]


def _usable_mask(
    shape: tuple[int, int], labels: np.ndarray | None, grey: np.ndarray, border: int
) -> np.ndarray:
    """uint8 mask of where corners may be picked: inside the border, textured (not black), and
    not on a dynamic label."""
    mask = np.zeros(shape, np.uint8)
    mask[border:-border, border:-border] = 255
    mask[grey == 0] = 0  # black rectification border
    if labels is not None:
        mask[np.isin(labels, DYNAMIC_LABELS)] = 0
    return mask


def _lk(
    src: np.ndarray,
    dst: np.ndarray,
    points: np.ndarray,
    guess: np.ndarray,
    fb: float,
    params: dict | None = None,
):
    """LK of points [M,2] from src to dst with a forward-backward check: (new [M,2], ok [M])."""
    if len(points) == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, bool)
    p0 = points.reshape(-1, 1, 2).astype(np.float32)
    params = params or LK_PARAMS
    p1, ok1, _ = cv2.calcOpticalFlowPyrLK(
        src, dst, p0, guess.reshape(-1, 1, 2).astype(np.float32).copy(),
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **params,
    )  # fmt: skip
    p2, ok2, _ = cv2.calcOpticalFlowPyrLK(
        dst, src, p1, p0.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **params
    )
    err = np.linalg.norm((p2 - p0).reshape(-1, 2), axis=1)
    ok = (ok1.ravel() == 1) & (ok2.ravel() == 1) & (err < fb)
    return p1.reshape(-1, 2), ok


@dataclass
class SparseTracks:
    """Sparse stereo tracks of a clip: per observation (track id, frame, left x y, right x)."""

    track: np.ndarray
    frame: np.ndarray
    left: np.ndarray
    right: np.ndarray
    """[M,2] right-eye px, NaN where the stereo match failed."""
    num_tracks: int


def track_sparse(
    left: np.ndarray, right: np.ndarray, labels: np.ndarray | None, config: PoseConfig
) -> SparseTracks:
    """Sparse left-eye tracks with stereo matches, frames [T,S,S,3] or [T,S,S]
    uint8, labels [T,S,S] or None."""
    grey_l, grey_r = _grey(left), _grey(right)
    num_frames = len(grey_l)
    size = grey_l[0].shape
    obs_track, obs_frame, obs_left = [], [], []
    ids = np.zeros(0, np.int64)
    points = np.zeros((0, 2), np.float32)
    first_frame = np.zeros(0, int)  # per live track: the frame it started in, its px there
    first_px = np.zeros((0, 2), np.float32)
    next_id = 0
    for t in range(num_frames):
        lab = None if labels is None else labels[t]
        if t > 0 and len(points):
            new, ok = _lk(grey_l[t - 1], grey_l[t], points, points, config.fb_threshold_px)
            inside = (
                (new[:, 0] >= config.border_px)
                & (new[:, 1] >= config.border_px)
                & (new[:, 0] < size[1] - config.border_px)
                & (new[:, 1] < size[0] - config.border_px)
            )
            ok &= inside
            for first in np.unique(first_frame[ok]):  # refine against each track's first frame
                sel = np.nonzero(ok & (first_frame == first))[0]
                refined, held = _lk(
                    grey_l[first], grey_l[t], first_px[sel], new[sel], config.fb_threshold_px
                )
                held &= np.linalg.norm(refined - new[sel], axis=1) < config.anchor_max_px
                new[sel[held]] = refined[held]
                ok[sel[~held]] = False
            if lab is not None and ok.any():
                px = np.clip(np.round(new).astype(int), 0, [size[1] - 1, size[0] - 1])
                ok &= ~np.isin(lab[px[:, 1], px[:, 0]], DYNAMIC_LABELS)
            points, ids = new[ok], ids[ok]
            first_frame, first_px = first_frame[ok], first_px[ok]
        if len(points) < 0.6 * config.corners:
            mask = _usable_mask(size, lab, grey_l[t], config.border_px)
            for x, y in points.astype(int):
                cv2.circle(mask, (int(x), int(y)), config.min_distance_px, 0, -1)
            fresh = cv2.goodFeaturesToTrack(
                grey_l[t],
                config.corners - len(points),
                config.corner_quality,
                config.min_distance_px,
                mask=mask,
            )
            if fresh is not None:
                fresh = fresh.reshape(-1, 2)
                points = np.concatenate([points, fresh]).astype(np.float32)
                first_frame = np.concatenate([first_frame, np.full(len(fresh), t)])
                first_px = np.concatenate([first_px, fresh]).astype(np.float32)
                ids = np.concatenate([ids, np.arange(next_id, next_id + len(fresh))])
                next_id += len(fresh)
        obs_track.append(ids.copy())
        obs_frame.append(np.full(len(ids), t))
        obs_left.append(points.copy())
    track = np.concatenate(obs_track)
    frame = np.concatenate(obs_frame)
    left_px = np.concatenate(obs_left).astype(np.float64)
    right_px = np.full_like(left_px, np.nan)
    for t in range(num_frames):
        sel = np.nonzero(frame == t)[0]
        matched, ok = _lk(
            grey_l[t],
            grey_r[t],
            left_px[sel],
            left_px[sel],
            config.fb_threshold_px,
            STEREO_LK_PARAMS,
        )
        disparity = left_px[sel, 0] - matched[:, 0]
        ok &= np.abs(matched[:, 1] - left_px[sel, 1]) <= config.max_stereo_dy_px
        ok &= disparity >= config.stereo_floor_px
        right_px[sel[ok]] = matched[ok]
    # LK works in pixel-centre-at-integer coordinates; the cameras (geometry.camera) put pixel
    # i's centre at i + 0.5
    return SparseTracks(track, frame, left_px + 0.5, right_px + 0.5, next_id)


def _camera_points(
    left_px: np.ndarray, right_px: np.ndarray, k: np.ndarray, baseline: float, min_disparity: float
) -> np.ndarray:
    """Camera-frame points [M,3] m from stereo matches (NaN rows where unmatched or the
    disparity is under `min_disparity` px)."""
    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    disparity = left_px[:, 0] - right_px[:, 0]
    depth = np.where(disparity >= min_disparity, f * baseline / np.maximum(disparity, 1e-9), np.nan)
    return np.stack(
        [(left_px[:, 0] - cx) / f * depth, (left_px[:, 1] - cy) / f * depth, depth], axis=1
    )


def initial_poses(
    tracks: SparseTracks, num_frames: int, k: np.ndarray, config: PoseConfig, clip_id: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame-by-frame PnP-RANSAC: (world2camera [T,3,4], track world points [N,3] (NaN: none),
    outlier rate per track [N])."""
    w2c = np.zeros((num_frames, 3, 4))
    w2c[0, :, :3] = np.eye(3)
    cam = _camera_points(tracks.left, tracks.right, k, config.baseline_m, config.min_disparity_px)
    n = tracks.num_tracks
    sums = np.zeros((n, 3))
    counts = np.zeros(n)
    inlier_count = np.zeros(n)
    used_count = np.zeros(n)

    def add_world(t: int) -> None:
        sel = np.nonzero((tracks.frame == t) & np.isfinite(cam[:, 2]))[0]
        rot, trans = w2c[t, :, :3], w2c[t, :, 3]
        world = (cam[sel] - trans) @ rot  # Rᵀ (x − t)
        np.add.at(sums, tracks.track[sel], world)
        np.add.at(counts, tracks.track[sel], 1)

    add_world(0)
    for t in range(1, num_frames):
        sel = np.nonzero(tracks.frame == t)[0]
        ids = tracks.track[sel]
        known = counts[ids] > 0
        sel, ids = sel[known], ids[known]
        if len(sel) < 6:
            raise StageError(
                clip_id, STAGE, f"frame {t}: only {len(sel)} tracked points with depth to pose it"
            )
        obj = sums[ids] / counts[ids, None]
        img = tracks.left[sel]
        prev = w2c[t - 1]
        rvec0, _ = cv2.Rodrigues(prev[:, :3])
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            obj, img, k, None, rvec0.copy(), prev[:, 3].reshape(3, 1).copy(),
            useExtrinsicGuess=True, iterationsCount=200,
            reprojectionError=config.pnp_threshold_px, confidence=0.999,
            flags=cv2.SOLVEPNP_ITERATIVE,
        )  # fmt: skip
        if not ok or inliers is None or len(inliers) < 6:
            raise StageError(
                clip_id,
                STAGE,
                f"frame {t}: PnP-RANSAC found no consistent pose from {len(sel)} points",
            )
        inl = inliers.ravel()
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], k, None, rvec, tvec)
        w2c[t, :, :3] = cv2.Rodrigues(rvec)[0]
        w2c[t, :, 3] = tvec.ravel()
        used_count[ids] += 1
        inlier_count[ids[inl]] += 1
        add_world(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        world = sums / counts[:, None]
        outlier_rate = np.where(used_count > 0, 1 - inlier_count / np.maximum(used_count, 1), 0.0)
    world[counts == 0] = np.nan
    return w2c, world, outlier_rate


def _skew(v: np.ndarray) -> np.ndarray:
    """[...,3] → [...,3,3] cross-product matrices."""
    out = np.zeros((*v.shape[:-1], 3, 3))
    out[..., 0, 1], out[..., 0, 2] = -v[..., 2], v[..., 1]
    out[..., 1, 0], out[..., 1, 2] = v[..., 2], -v[..., 0]
    out[..., 2, 0], out[..., 2, 1] = -v[..., 1], v[..., 0]
    return out


@dataclass
class BundleState:
    """Unknowns of the bundle: world2camera rotations [T,3,3] and translations [T,3] (frame 0
    fixed at identity), static world points [P,3] m, the right eye's residual rotation [3,3]."""

    rotations: np.ndarray
    translations: np.ndarray
    points: np.ndarray
    right_eye: np.ndarray

    def world2camera(self) -> np.ndarray:
        return np.concatenate([self.rotations, self.translations[:, :, None]], axis=2)


class BundleProblem:
    """Left reprojection + right-eye (stereo) reprojection residuals, Huber-robust.

    Observation m of point `obs_point[m]` in frame `obs_frame[m]`: left pixel `left_px[m]`,
    right pixel `right_px[m]` (NaN: no stereo match). The right camera is the left one shifted by
    the baseline along its x axis, then turned by the right eye's residual rotation Q:
    x_R = Q·(x_L − [b, 0, 0]). Camera parameters: per frame 1..T−1 a rotation increment and a
    translation (6), plus Q's increment (3) when solved; point parameters: xyz (3).

    Solved by Levenberg–Marquardt on the normal equations with the points eliminated (Schur
    complement: the reduced camera system is 6(T−1)+3 square, dense, tiny), Huber weights by
    iterative reweighting. scipy's `least_squares` (trf + lsmr on the sparse Jacobian) was
    measured on the 40-frame synthetic clip: no convergence in 60 evaluations (7 s, zig-zagging
    cost); this converges in ~10 iterations.
    """

    def __init__(
        self,
        obs_point: np.ndarray,
        obs_frame: np.ndarray,
        left_px: np.ndarray,
        right_px: np.ndarray,
        k: np.ndarray,
        config: PoseConfig,
        num_frames: int,
        num_points: int,
    ) -> None:
        stereo = np.nonzero(np.isfinite(right_px[:, 0]))[0]
        # one row per 2-vector residual: left observations, then right ones
        self.point = np.concatenate([obs_point, obs_point[stereo]])
        self.frame = np.concatenate([obs_frame, obs_frame[stereo]])
        self.is_right = np.concatenate([np.zeros(len(obs_point), bool), np.ones(len(stereo), bool)])
        self.target = np.concatenate([left_px, right_px[stereo]])
        # rows grouped by frame: the camera block of the normal equations is then a sum per frame
        order = np.argsort(self.frame, kind="stable")
        self.point, self.frame = self.point[order], self.frame[order]
        self.is_right, self.target = self.is_right[order], self.target[order]
        self.frames_present, self.frame_starts = np.unique(self.frame, return_index=True)
        self.f, self.c = k[0, 0], k[:2, 2]
        self.baseline = config.baseline_m
        self.huber = config.huber_px
        self.solve_right = config.solve_right_eye
        self.prior = 0.3 / np.radians(config.right_eye_prior_deg)  # px per rad of Q
        self.num_frames, self.num_points = num_frames, num_points
        self.num_cam = 6 * (num_frames - 1) + (3 if self.solve_right else 0)

    def _camera_points(self, s: BundleState) -> tuple[np.ndarray, np.ndarray]:
        """(left-camera points [M,3] per row, points in the row's own eye [M,3])."""
        xc = np.einsum("mij,mj->mi", s.rotations[self.frame], s.points[self.point])
        xc += s.translations[self.frame]
        xe = xc.copy()
        r = self.is_right
        xe[r] = (xc[r] - np.array([self.baseline, 0.0, 0.0])) @ s.right_eye.T
        return xc, xe

    def residuals(self, s: BundleState) -> np.ndarray:
        """[M,2] px, predicted minus observed."""
        _, xe = self._camera_points(s)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.f * xe[:, :2] / xe[:, 2:] + self.c - self.target

    def _weights(self, res: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(res, axis=1)
        return np.where(norm <= self.huber, 1.0, self.huber / np.maximum(norm, 1e-12))

    def cost(self, s: BundleState) -> float:
        """Huber cost Σρ(‖r‖) (+ right-eye prior), with ρ = r²/2 inside, k(|r| − k/2) outside."""
        norm = np.linalg.norm(self.residuals(s), axis=1)
        norm = np.where(np.isfinite(norm), norm, 1e6)
        rho = np.where(norm <= self.huber, 0.5 * norm**2, self.huber * (norm - 0.5 * self.huber))
        omega = Rotation.from_matrix(s.right_eye).as_rotvec()
        return float(rho.sum() + 0.5 * np.sum((self.prior * omega) ** 2))

    def jacobians(self, s: BundleState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(camera block [M,2,9], point block [M,2,3], residuals [M,2]); camera columns: frame
        rotation increment (3), translation (3), right-eye rotation increment (3)."""
        xc, xe = self._camera_points(s)
        inv_z = 1.0 / xe[:, 2]
        proj = np.zeros((len(xe), 2, 3))
        proj[:, 0, 0] = proj[:, 1, 1] = self.f * inv_z
        proj[:, 0, 2] = -self.f * xe[:, 0] * inv_z**2
        proj[:, 1, 2] = -self.f * xe[:, 1] * inv_z**2
        eye = np.broadcast_to(np.eye(3), (len(xe), 3, 3)).copy()
        eye[self.is_right] = s.right_eye
        g = proj @ eye  # d residual / d left-camera point
        cam = np.zeros((len(xe), 2, 9))
        # left increments: R ← Exp(δ)R gives d(xc)/dδ = −[R·X]×; translation: identity
        cam[:, :, :3] = g @ -_skew(xc - s.translations[self.frame])
        cam[:, :, 3:6] = g
        r = self.is_right
        cam[r, :, 6:] = proj[r] @ -_skew(xe[r])  # Q ← Exp(ε)Q: d(xe)/dε = −[xe]×
        point = g @ s.rotations[self.frame]
        res = self.f * xe[:, :2] / xe[:, 2:] + self.c - self.target
        return cam, point, res

    def _camera_columns(self) -> np.ndarray:
        """[M,9] reduced-system column of each camera parameter of each row (−1: fixed)."""
        cols = np.full((len(self.frame), 9), -1)
        moving = self.frame > 0
        cols[moving, :6] = 6 * (self.frame[moving, None] - 1) + np.arange(6)
        if self.solve_right:
            cols[self.is_right, 6:] = 6 * (self.num_frames - 1) + np.arange(3)
        return cols

    def _apply(self, s: BundleState, step_cam: np.ndarray, step_pts: np.ndarray) -> BundleState:
        frames = step_cam[: 6 * (self.num_frames - 1)].reshape(-1, 6)
        rot = s.rotations.copy()
        rot[1:] = Rotation.from_rotvec(frames[:, :3]).as_matrix() @ rot[1:]
        trans = s.translations.copy()
        trans[1:] += frames[:, 3:]
        right = s.right_eye
        if self.solve_right:
            right = Rotation.from_rotvec(step_cam[-3:]).as_matrix() @ right
        return BundleState(rot, trans, s.points + step_pts, right)

    def solve(self, state: BundleState, max_iterations: int = 40, tolerance: float = 1e-5):
        """Levenberg–Marquardt with Schur elimination of the points; returns (state, iterations).

        BLAS runs on one thread: the dense reduced system is at most ~1,200 square (200
        frames), where threads only add overhead (40× slower on a loaded 2-core machine).
        """
        with threadpool_limits(1, user_api="blas"):
            return self._solve(state, max_iterations, tolerance)

    def _solve(self, state: BundleState, max_iterations: int, tolerance: float):
        cols = self._camera_columns()
        valid_cols = cols >= 0
        n_cam, n_pts = self.num_cam, self.num_points
        lam = 1e-3
        cost = self.cost(state)
        iterations = 0
        for iterations in range(1, max_iterations + 1):
            cam, pt, res = self.jacobians(state)
            w = self._weights(res)[:, None, None]
            cam = np.where(valid_cols[:, None, :], cam, 0.0)
            # normal-equation blocks (weighted): U camera², V per point, W camera×point
            jt_cam = np.swapaxes(cam, 1, 2) * w  # [M,9,2]
            u_blocks = jt_cam @ cam  # [M,9,9]
            w_blocks = jt_cam @ pt  # [M,9,3]
            v_blocks = (np.swapaxes(pt, 1, 2) * w) @ pt  # [M,3,3]
            g_cam = np.einsum("mij,mj->mi", jt_cam, res)  # [M,9]
            g_pt = np.einsum("mji,mj->mi", pt * w, res)  # [M,3]
            # accumulate by flat index (np.bincount); column n_cam collects fixed parameters
            c = np.where(valid_cols, cols, n_cam)
            side = n_cam + 1
            # U is block diagonal over frames (+ the right-eye rotation's border): sum per frame
            u_frames = np.add.reduceat(u_blocks, self.frame_starts, axis=0)  # [F,9,9]
            g_frames = np.add.reduceat(g_cam, self.frame_starts, axis=0)  # [F,9]
            u = np.zeros((n_cam, n_cam))
            gc = np.zeros(n_cam)
            for frame, u_f, g_f in zip(self.frames_present, u_frames, g_frames, strict=True):
                if frame > 0:
                    block = slice(6 * (frame - 1), 6 * frame)
                    u[block, block] += u_f[:6, :6]
                    gc[block] += g_f[:6]
                    if self.solve_right:
                        u[block, -3:] += u_f[:6, 6:]
                        u[-3:, block] += u_f[6:, :6]
                if self.solve_right:
                    u[-3:, -3:] += u_f[6:, 6:]
                    gc[-3:] += g_f[6:]
            if self.solve_right:
                omega = Rotation.from_matrix(state.right_eye).as_rotvec()
                u[-3:, -3:] += self.prior**2 * np.eye(3)
                gc[-3:] += self.prior**2 * omega
            v = np.zeros((n_pts, 9))
            for j in range(9):
                v[:, j] = np.bincount(self.point, v_blocks.reshape(-1, 9)[:, j], n_pts)
            v_pt = v.reshape(n_pts, 3, 3)  # per point [P,3,3]
            gp = np.stack([np.bincount(self.point, g_pt[:, j], n_pts) for j in range(3)], 1)
            # W (camera × point), dense [P, C, 3] and as [C, 3P] for BLAS products
            flat_w = ((self.point[:, None] * side + c)[:, :, None] * 3 + np.arange(3)).ravel()
            wmat = np.bincount(flat_w, w_blocks.ravel(), n_pts * side * 3)
            wmat = wmat.reshape(n_pts, side, 3)[:, :n_cam]
            w_flat = np.ascontiguousarray(wmat.transpose(1, 0, 2)).reshape(n_cam, -1)
            while True:
                v_damped = v_pt + lam * (v_pt * np.eye(3)) + 1e-9 * np.eye(3)
                v_inv = np.linalg.inv(v_damped)
                u_damped = u + lam * np.diag(np.diag(u)) + 1e-9 * np.eye(n_cam)
                wv = np.ascontiguousarray((wmat @ v_inv).transpose(1, 0, 2)).reshape(n_cam, -1)
                schur = u_damped - wv @ w_flat.T
                rhs = -gc + wv @ gp.ravel()
                step_cam = scipy.linalg.solve(schur, rhs, assume_a="pos")
                back = (w_flat.T @ step_cam).reshape(n_pts, 3)
                step_pts = np.einsum("pij,pj->pi", v_inv, -gp - back)
                candidate = self._apply(state, step_cam, step_pts)
                new_cost = self.cost(candidate)
                if new_cost < cost:
                    lam = max(lam / 3.0, 1e-9)
                    break
                lam *= 4.0
                if lam > 1e8:
                    return state, iterations
            improvement = (cost - new_cost) / max(cost, 1e-12)
            state, cost = candidate, new_cost
            if improvement < tolerance:
                break
        return state, iterations


PRUNING_ROUNDS = 3
"""Bundle solves per clip; points whose median residual says they move are dropped between
them, so the last solve (and every figure) uses exactly the points that are left."""


def _bundle_problem(
    tracks: SparseTracks,
    candidates: np.ndarray,
    k: np.ndarray,
    config: PoseConfig,
    num_frames: int,
) -> BundleProblem:
    """The bundle over the observations of the `candidates` tracks (point i = candidates[i])."""
    point = _point_of_observations(tracks, candidates)
    obs = np.nonzero(point >= 0)[0]
    return BundleProblem(
        point[obs], tracks.frame[obs], tracks.left[obs], tracks.right[obs],
        k, config, num_frames, len(candidates),
    )  # fmt: skip


def _point_of_observations(tracks: SparseTracks, candidates: np.ndarray) -> np.ndarray:
    """The bundle point [M] of each observation of `tracks`: i where its track is
    candidates[i], −1 where its track is not in the bundle."""
    remap = np.full(tracks.num_tracks, -1)
    remap[candidates] = np.arange(len(candidates))
    return remap[tracks.track]


def _biased_stereo(
    tracks: SparseTracks,
    candidates: np.ndarray,
    state: BundleState,
    k: np.ndarray,
    config: PoseConfig,
) -> np.ndarray:
    """Which observations [M] of `tracks` have a stereo match whose disparity the solved
    points and poses miss by more than max_disparity_error_px. The stereo term alone sets the
    scale, and a stereo window across a depth edge takes the nearer surface's disparity
    (within 4 px of an edge: +0.36 to +0.54 px median on synthetic clips, true depth), while
    the motion over a clip (~1 m against a 6.3 cm baseline) pins each point's depth far more
    tightly: such matches are dropped between the solves, their left observations kept."""
    point = _point_of_observations(tracks, candidates)
    seen = (point >= 0) & np.isfinite(tracks.right[:, 0])
    out = np.zeros(len(point), bool)
    idx = np.nonzero(seen)[0]
    xc = np.einsum("mij,mj->mi", state.rotations[tracks.frame[idx]], state.points[point[idx]])
    xc += state.translations[tracks.frame[idx]]
    predicted = k[0, 0] * (xc[:, 0] - config.baseline_m) / xc[:, 2] + k[0, 2]
    out[idx] = np.abs(predicted - tracks.right[idx, 0]) > config.max_disparity_error_px
    return out


def _per_point_median(values: np.ndarray, point: np.ndarray, num_points: int) -> np.ndarray:
    """Median [P] of `values [M]` per point index `point [M]` (inf for a point without any)."""
    order = np.argsort(point, kind="stable")
    counts = np.bincount(point, minlength=num_points)
    groups = np.split(values[order], np.cumsum(counts)[:-1])
    return np.array([np.median(g) if g.size else np.inf for g in groups])


def estimate_poses(
    left: np.ndarray,
    right: np.ndarray,
    clip_id: str,
    labels: np.ndarray | None = None,
    config: PoseConfig | None = None,
) -> PoseResult:
    """Metric camera2world [T,3,4] of a rectified stereo clip (left/right
    [T,S,S,3] or grey [T,S,S] uint8).

    labels: optional ADE20K labels [T,S,S] of the left eye (dynamic classes are not used).
    Raises StageError(clip_id, 'poses', figures) when the poses cannot be trusted.
    """
    config = config or PoseConfig()
    start = time.perf_counter()
    num_frames, size = left.shape[0], left.shape[2]
    if num_frames < 2:
        raise StageError(clip_id, STAGE, f"a clip needs at least 2 frames, got {num_frames}")
    k = intrinsics(size, left.shape[1], config.hfov_deg)
    tracks = track_sparse(left, right, labels, config)
    result = poses_from_tracks(tracks, num_frames, k, clip_id, config)
    result.seconds["tracks"] = time.perf_counter() - start - result.seconds["total"]
    result.seconds["total"] = time.perf_counter() - start
    return result


BundleSolver = Callable[[BundleProblem, BundleState], tuple[BundleState, int]]
"""Solves one bundle problem from a start state: (solved state, iterations)."""


def solve_bundle(problem: BundleProblem, state: BundleState) -> tuple[BundleState, int]:
    """Our Levenberg–Marquardt (`BundleProblem.solve`)."""
    return problem.solve(state)


def poses_from_tracks(
    tracks: SparseTracks,
    num_frames: int,
    k: np.ndarray,
    clip_id: str,
    config: PoseConfig,
    solver: BundleSolver = solve_bundle,
) -> PoseResult:
    """Metric camera2world [T,3,4] from sparse stereo tracks (intrinsics `k` [3,3] px): PnP
    initialisation, then bundle solves (`solver`) that drop points whose residuals say they
    move. Raises StageError(clip_id, 'poses', figures) when the poses cannot be trusted."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    mark = start
    w2c, world, outlier_rate = initial_poses(tracks, num_frames, k, config, clip_id)
    seconds["init"] = time.perf_counter() - mark
    mark = time.perf_counter()

    # static points for the bundle: seen in >= 3 frames, have depth, rarely a RANSAC outlier
    lengths = np.bincount(tracks.track, minlength=tracks.num_tracks)
    good = np.isfinite(world[:, 0]) & (lengths >= 3) & (outlier_rate <= 0.2)
    candidates = np.nonzero(good)[0]
    candidates = candidates[np.argsort(-lengths[candidates], kind="stable")][: config.max_points]
    if len(candidates) < config.min_points:
        raise StageError(
            clip_id,
            STAGE,
            f"only {len(candidates)} static points usable for poses (need {config.min_points}; "
            f"{tracks.num_tracks} tracks, {int(np.isfinite(world[:, 0]).sum())} with depth, "
            f"{int((outlier_rate > 0.2).sum())} rejected as moving)",
        )
    state = BundleState(
        rotations=w2c[:, :, :3].copy(),
        translations=w2c[:, :, 3].copy(),
        points=world[candidates].copy(),
        right_eye=np.eye(3),
    )
    iterations = []
    for round_ in range(PRUNING_ROUNDS):  # solve; drop points that look moving; solve again
        problem = _bundle_problem(tracks, candidates, k, config, num_frames)
        state, its = solver(problem, state)
        iterations.append(its)
        if round_ == PRUNING_ROUNDS - 1:
            break  # the last solve's problem is the one the figures below are computed on
        residuals = problem.residuals(state)
        errors = np.linalg.norm(residuals, axis=1)
        errors = np.where(np.isfinite(errors), errors, np.inf)
        keep = _per_point_median(errors, problem.point, len(candidates)) < config.prune_px
        biased = _biased_stereo(tracks, candidates, state, k, config)
        if (keep.all() and not biased.any()) or keep.sum() < config.min_points:
            break
        tracks = replace(tracks, right=np.where(biased[:, None], np.nan, tracks.right))
        candidates = candidates[keep]
        state = BundleState(
            state.rotations, state.translations, state.points[keep], state.right_eye
        )
    seconds["bundle"] = time.perf_counter() - mark

    errors = np.linalg.norm(problem.residuals(state), axis=1)
    errors = np.where(np.isfinite(errors), errors, np.inf)
    inlier = errors < config.inlier_px
    inlier_fraction = float(inlier.mean())
    rms = float(np.sqrt(np.mean(errors[inlier] ** 2))) if inlier.any() else float("inf")
    left_rows = ~problem.is_right
    frame_inliers = np.bincount(problem.frame[left_rows & inlier], minlength=num_frames)
    worst = int(frame_inliers.min())
    figures = (
        f"{len(candidates)} static points, inlier fraction {inlier_fraction:.2f} (min "
        f"{config.min_inlier_fraction}), inlier RMS {rms:.2f} px (max {config.max_rms_px}), "
        f"fewest inliers in a frame {worst} at frame {int(frame_inliers.argmin())} (min "
        f"{config.min_frame_inliers})"
    )
    if (
        len(candidates) < config.min_points
        or inlier_fraction < config.min_inlier_fraction
        or rms > config.max_rms_px
        or worst < config.min_frame_inliers
    ):
        raise StageError(clip_id, STAGE, f"poses not trustworthy: {figures}")
    rot, trans = state.rotations, state.translations
    c2w = np.concatenate(
        [np.swapaxes(rot, 1, 2), -np.einsum("tji,tj->ti", rot, trans)[:, :, None]], axis=2
    )
    seconds["total"] = time.perf_counter() - start
    return PoseResult(
        camera2world=c2w,
        points=state.points,
        right_eye_rotation=state.right_eye,
        rms_px=rms,
        inlier_fraction=inlier_fraction,
        min_frame_inliers=worst,
        num_points=len(candidates),
        seconds=seconds,
        iterations=iterations,
    )
