"""Metric camera trajectory of a rectified stereo clip: sparse tracks, stereo, PnP, bundle adjustment.

World = the first frame's rectified left camera; metres (the 0.063 m baseline sets the scale).

1. Sparse tracks: corners of the left eye tracked frame to frame with pyramidal Lucas–Kanade,
   forward-backward checked, topped up with new corners as tracks end (no dense grid: a few
   thousand points pin six numbers per frame). With segmentation labels, points on ADE20K
   classes that move (people, vehicles, animals) are never used, nor sky.
2. Stereo: each tracked point is matched into the right eye (LK, forward-backward, |Δy| ≤ 1 px
   on a rectified pair) — disparity, hence metric depth f·b/d, at sub-pixel precision.
3. Initialisation: frame by frame, PnP-RANSAC (`cv2.solvePnPRansac`) of the tracks' 3D points
   (stereo, in the world through the poses already found) against the new frame's 2D points.
   Points that RANSAC keeps rejecting are movers and are dropped.
4. Bundle adjustment of all frames and points (scipy `least_squares`, analytic sparse Jacobian,
   Huber loss): left-eye reprojection plus the stereo term — reprojection into the right eye,
   the left camera shifted by the baseline — with an optional small right-eye rotation (the
   rig's residual relative rotation, which biases disparities hence scale) solved as well.
A clip whose poses cannot be trusted (too few static points or inliers in some frame, a high
residual) raises StageError with the figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix
from scipy.spatial.transform import Rotation

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
    "winSize": (21, 21),
    "maxLevel": 3,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 0.003),
}


@dataclass(frozen=True)
class PoseConfig:
    """Pose estimation settings.

    corners: target number of live tracks; min_distance_px: corner spacing; fb_threshold_px:
    LK forward-backward tolerance (tracking and stereo); max_stereo_dy_px: vertical disparity
    allowed on the rectified pair; min_disparity_px: smaller disparities (farther than
    ~f·b/d) give no depth; pnp_threshold_px: RANSAC reprojection tolerance; max_points: points in
    the bundle adjustment (longest tracks first); huber_px: robust loss scale; inlier_px: a
    residual under this counts as an inlier; min_points / min_frame_inliers / max_rms_px /
    min_inlier_fraction: trust thresholds; solve_right_eye: also solve the right eye's residual
    rotation; right_eye_prior_deg: its prior width.
    """

    corners: int = 1200
    min_distance_px: int = 10
    border_px: int = 8
    fb_threshold_px: float = 0.5
    max_stereo_dy_px: float = 1.0
    min_disparity_px: float = 0.5
    pnp_threshold_px: float = 1.5
    max_points: int = 1500
    huber_px: float = 1.0
    inlier_px: float = 2.0
    min_points: int = 60
    min_frame_inliers: int = 25
    max_rms_px: float = 1.0
    min_inlier_fraction: float = 0.6
    solve_right_eye: bool = True
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


def _grey(frames: np.ndarray) -> list[np.ndarray]:
    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]


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


def _lk(src: np.ndarray, dst: np.ndarray, points: np.ndarray, guess: np.ndarray, fb: float):
    """LK of points [M,2] from src to dst with a forward-backward check: (new [M,2], ok [M])."""
    if len(points) == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, bool)
    p0 = points.reshape(-1, 1, 2).astype(np.float32)
    p1, ok1, _ = cv2.calcOpticalFlowPyrLK(
        src, dst, p0, guess.reshape(-1, 1, 2).astype(np.float32).copy(),
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **LK_PARAMS,
    )  # fmt: skip
    p2, ok2, _ = cv2.calcOpticalFlowPyrLK(
        dst, src, p1, p0.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **LK_PARAMS
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
    """Sparse left-eye tracks with stereo matches, frames [T,S,S,3] uint8, labels [T,S,S] or None."""
    grey_l, grey_r = _grey(left), _grey(right)
    num_frames = len(grey_l)
    size = grey_l[0].shape
    obs_track, obs_frame, obs_left = [], [], []
    ids = np.zeros(0, np.int64)
    points = np.zeros((0, 2), np.float32)
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
            if lab is not None and ok.any():
                px = np.clip(np.round(new).astype(int), 0, [size[1] - 1, size[0] - 1])
                ok &= ~np.isin(lab[px[:, 1], px[:, 0]], DYNAMIC_LABELS)
            points, ids = new[ok], ids[ok]
        if len(points) < 0.8 * config.corners:
            mask = _usable_mask(size, lab, grey_l[t], config.border_px)
            for x, y in points.astype(int):
                cv2.circle(mask, (int(x), int(y)), config.min_distance_px, 0, -1)
            fresh = cv2.goodFeaturesToTrack(
                grey_l[t], config.corners - len(points), 0.01, config.min_distance_px, mask=mask
            )
            if fresh is not None:
                fresh = fresh.reshape(-1, 2)
                points = np.concatenate([points, fresh]).astype(np.float32)
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
        matched, ok = _lk(grey_l[t], grey_r[t], left_px[sel], left_px[sel], config.fb_threshold_px)
        disparity = left_px[sel, 0] - matched[:, 0]
        ok &= np.abs(matched[:, 1] - left_px[sel, 1]) <= config.max_stereo_dy_px
        ok &= disparity >= config.min_disparity_px
        right_px[sel[ok]] = matched[ok]
    return SparseTracks(track, frame, left_px, right_px, next_id)


def _camera_points(
    left_px: np.ndarray, right_px: np.ndarray, k: np.ndarray, baseline: float
) -> np.ndarray:
    """Camera-frame points [M,3] m from stereo matches (NaN rows where unmatched)."""
    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    depth = f * baseline / (left_px[:, 0] - right_px[:, 0])
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
    cam = _camera_points(tracks.left, tracks.right, k, config.baseline_m)
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


def _left_jacobian(phi: np.ndarray) -> np.ndarray:
    """SO(3) left Jacobian J_l(φ) [...,3,3]: Exp(φ + δ) ≈ Exp(J_l δ) Exp(φ)."""
    theta = np.linalg.norm(phi, axis=-1)[..., None, None]
    k = _skew(phi)
    small = theta < 1e-8
    t = np.where(small, 1.0, theta)
    a = np.where(small, 0.5, (1 - np.cos(t)) / t**2)
    b = np.where(small, 1.0 / 6.0, (t - np.sin(t)) / t**3)
    return np.eye(3) + a * k + b * (k @ k)


class BundleProblem:
    """Reprojection (left) + stereo (right eye) residuals with an analytic sparse Jacobian.

    Parameters: per frame 1..T−1 a left-increment rotation δ (R = Exp(δ)·R0) and translation
    (world2camera), per point its world xyz, and optionally the right eye's rotation ω.
    """

    def __init__(
        self,
        w2c0: np.ndarray,
        points0: np.ndarray,
        obs_point: np.ndarray,
        obs_frame: np.ndarray,
        left_px: np.ndarray,
        right_px: np.ndarray,
        k: np.ndarray,
        config: PoseConfig,
    ) -> None:
        self.num_frames, self.num_points = w2c0.shape[0], points0.shape[0]
        self.r0 = w2c0[:, :, :3]
        self.pt, self.fr = obs_point, obs_frame
        self.uv = left_px
        self.stereo = np.nonzero(np.isfinite(right_px[:, 0]))[0]
        self.uv_r = right_px[self.stereo]
        self.f, self.c = k[0, 0], k[:2, 2]
        self.b = config.baseline_m
        self.solve_right = config.solve_right_eye
        self.prior_weight = 0.3 / np.radians(config.right_eye_prior_deg)  # px per rad
        self._pose_cols = 6 * (self.num_frames - 1)
        self._point_col0 = self._pose_cols
        self._eye_col0 = self._pose_cols + 3 * self.num_points
        self.x0 = np.concatenate(
            [
                np.concatenate([np.zeros((self.num_frames - 1, 3)), w2c0[1:, :, 3]], 1).ravel(),
                points0.ravel(),
                np.zeros(3 if self.solve_right else 0),
            ]
        )

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rotations [T,3,3], translations [T,3], points [P,3], right-eye ω [3])."""
        poses = x[: self._pose_cols].reshape(-1, 6)
        delta = np.concatenate([np.zeros((1, 3)), poses[:, :3]])
        trans = np.concatenate([np.zeros((1, 3)), poses[:, 3:]])
        rot = Rotation.from_rotvec(delta).as_matrix() @ self.r0
        points = x[self._point_col0 : self._eye_col0].reshape(-1, 3)
        omega = x[self._eye_col0 :] if self.solve_right else np.zeros(3)
        return rot, trans, points, omega

    def _project(self, x: np.ndarray):
        rot, trans, points, omega = self.unpack(x)
        xc = np.einsum("mij,mj->mi", rot[self.fr], points[self.pt]) + trans[self.fr]
        q = Rotation.from_rotvec(omega).as_matrix()
        xs = xc[self.stereo] - np.array([self.b, 0.0, 0.0])
        xr = xs @ q.T
        return rot, trans, omega, q, xc, xr

    def residuals(self, x: np.ndarray) -> np.ndarray:
        """[2M + 2S (+3)] px: left (u, v) per observation, right (u, v) per stereo observation."""
        _, _, omega, _, xc, xr = self._project(x)
        left = self.f * xc[:, :2] / xc[:, 2:] + self.c - self.uv
        right = self.f * xr[:, :2] / xr[:, 2:] + self.c - self.uv_r
        parts = [left.ravel(), right.ravel()]
        if self.solve_right:
            parts.append(self.prior_weight * omega)
        return np.concatenate(parts)

    def _proj_jac(self, p: np.ndarray) -> np.ndarray:
        """d(f·p_xy/p_z)/dp [M,2,3]."""
        inv_z = 1.0 / p[:, 2]
        j = np.zeros((len(p), 2, 3))
        j[:, 0, 0] = j[:, 1, 1] = self.f * inv_z
        j[:, 0, 2] = -self.f * p[:, 0] * inv_z**2
        j[:, 1, 2] = -self.f * p[:, 1] * inv_z**2
        return j

    def jacobian(self, x: np.ndarray):
        """Sparse [residuals × params] Jacobian (CSR)."""
        rot, trans, omega, q, xc, xr = self._project(x)
        poses = x[: self._pose_cols].reshape(-1, 6)
        delta = np.concatenate([np.zeros((1, 3)), poses[:, :3]])
        jl = _left_jacobian(delta)
        # dXc/dδ = −[R·X]× J_l(δ), dXc/dt = I, dXc/dX = R
        d_rot = -_skew(xc - trans[self.fr]) @ jl[self.fr]
        rows, cols, vals = [], [], []
        m = len(self.fr)

        def block(row0: np.ndarray, dres: np.ndarray, frames: np.ndarray, pts: np.ndarray,
                  d_rot_: np.ndarray, rot_: np.ndarray, chain: np.ndarray | None) -> None:  # fmt: skip
            # dres [K,2,3] wrt the camera point; chain: extra left factor (right-eye rotation)
            g = dres if chain is None else dres @ chain
            movable = frames > 0
            pose_col = 6 * (frames - 1)
            for r in range(2):
                row = row0 + r
                gr = g[:, r, :]  # [K,3]
                for c in range(3):
                    sel = movable
                    rows.append(row[sel])
                    cols.append(pose_col[sel] + c)
                    vals.append(np.einsum("kj,kj->k", gr, d_rot_[:, :, c])[sel])
                    rows.append(row[sel])
                    cols.append(pose_col[sel] + 3 + c)
                    vals.append(gr[sel, c])
                    rows.append(row)
                    cols.append(self._point_col0 + 3 * pts + c)
                    vals.append(np.einsum("kj,kj->k", gr, rot_[:, :, c]))

        block(2 * np.arange(m), self._proj_jac(xc), self.fr, self.pt, d_rot, rot[self.fr], None)
        s = self.stereo
        row0 = 2 * m + 2 * np.arange(len(s))
        dres_r = self._proj_jac(xr)
        block(row0, dres_r, self.fr[s], self.pt[s], d_rot[s], rot[self.fr[s]], q[None])
        n_res = 2 * m + 2 * len(s)
        if self.solve_right:
            d_omega = dres_r @ (-_skew(xr) @ _left_jacobian(omega))  # [S,2,3]
            for r in range(2):
                for c in range(3):
                    rows.append(row0 + r)
                    cols.append(np.full(len(s), self._eye_col0 + c))
                    vals.append(d_omega[:, r, c])
            for c in range(3):
                rows.append(np.array([n_res + c]))
                cols.append(np.array([self._eye_col0 + c]))
                vals.append(np.array([self.prior_weight]))
            n_res += 3
        shape = (n_res, len(x))
        return coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape
        ).tocsr()

    def solve(self, x0: np.ndarray, huber_px: float, max_nfev: int = 60):
        return least_squares(
            self.residuals, x0, jac=self.jacobian, loss="huber", f_scale=huber_px,
            method="trf", tr_solver="lsmr", x_scale="jac", max_nfev=max_nfev,
        )  # fmt: skip


def estimate_poses(
    left: np.ndarray,
    right: np.ndarray,
    clip_id: str,
    labels: np.ndarray | None = None,
    config: PoseConfig | None = None,
) -> PoseResult:
    """Metric camera2world [T,3,4] of a rectified stereo clip (left/right [T,S,S,3] uint8).

    labels: optional ADE20K labels [T,S,S] of the left eye (dynamic classes are not used).
    Raises StageError(clip_id, 'poses', figures) when the poses cannot be trusted.
    """
    config = config or PoseConfig()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    num_frames, size = left.shape[0], left.shape[2]
    if num_frames < 2:
        raise StageError(clip_id, STAGE, f"a clip needs at least 2 frames, got {num_frames}")
    k = intrinsics(size, left.shape[1], config.hfov_deg)
    tracks = track_sparse(left, right, labels, config)
    seconds["tracks"] = time.perf_counter() - start
    mark = time.perf_counter()
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
    result = None
    for _ in range(2):  # solve, drop points whose residuals say they move, solve again
        remap = np.full(tracks.num_tracks, -1)
        remap[candidates] = np.arange(len(candidates))
        obs = np.nonzero(remap[tracks.track] >= 0)[0]
        problem = BundleProblem(
            w2c, world[candidates], remap[tracks.track[obs]], tracks.frame[obs],
            tracks.left[obs], tracks.right[obs], k, config,
        )  # fmt: skip
        result = problem.solve(problem.x0, config.huber_px)
        res = problem.residuals(result.x)
        m = len(obs)
        err_l = np.linalg.norm(res[: 2 * m].reshape(-1, 2), axis=1)
        order = np.argsort(problem.pt, kind="stable")
        counts = np.bincount(problem.pt, minlength=len(candidates))
        splits = np.split(err_l[order], np.cumsum(counts)[:-1])
        median_point = np.array([np.median(e) if len(e) else np.inf for e in splits])
        keep = median_point < config.inlier_px
        rot, trans, points, omega = problem.unpack(result.x)
        w2c = np.concatenate([rot, trans[:, :, None]], axis=2)
        world[candidates] = points
        if keep.all():
            break
        candidates = candidates[keep]
        if len(candidates) < config.min_points:
            break
    seconds["bundle"] = time.perf_counter() - mark

    res = problem.residuals(result.x)
    m = len(problem.fr)
    err_l = np.linalg.norm(res[: 2 * m].reshape(-1, 2), axis=1)
    err_r = np.linalg.norm(res[2 * m : 2 * m + 2 * len(problem.stereo)].reshape(-1, 2), axis=1)
    errors = np.concatenate([err_l, err_r])
    inlier = errors < config.inlier_px
    inlier_fraction = float(inlier.mean())
    rms = float(np.sqrt(np.mean(errors[inlier] ** 2))) if inlier.any() else float("inf")
    frame_inliers = np.bincount(problem.fr[err_l < config.inlier_px], minlength=num_frames)
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
    rot, trans, points, omega = problem.unpack(result.x)
    c2w = np.concatenate(
        [np.swapaxes(rot, 1, 2), -np.einsum("tji,tj->ti", rot, trans)[:, :, None]], axis=2
    )
    seconds["total"] = time.perf_counter() - start
    return PoseResult(
        camera2world=c2w,
        points=points,
        right_eye_rotation=Rotation.from_rotvec(omega).as_matrix(),
        rms_px=rms,
        inlier_fraction=inlier_fraction,
        min_frame_inliers=worst,
        num_points=len(candidates),
        seconds=seconds,
    )
