"""Own VR180 videos: clip splitting, rig calibration, metric poses, bad inputs (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from s4d_ray.errors import StageError
from s4d_ray.geometry.camera import intrinsics
from s4d_ray.geometry.pose_metrics import ate_se3, ate_sim3, relative_eye_rotation_error_deg
from s4d_ray.geometry.stereo_format import StereoFormat
from s4d_ray.io.clip_io import read_clip
from s4d_ray.ownvideo.calibration import (
    Calibration,
    calibrate_video,
    calibration_uri,
    epipolar_rays,
    epipolar_residuals,
    smallest_gauge,
    spread_corners,
    well_conditioned,
)
from s4d_ray.ownvideo.clips import (
    ClipConfig,
    FrameRateFilter,
    frame_flags,
    no_clip_reason,
    scan_frames,
    scan_video,
    split_clips,
)
from s4d_ray.ownvideo.poses import (
    BundleProblem,
    BundleState,
    PoseConfig,
    SparseTracks,
    estimate_poses,
    poses_from_tracks,
)
from s4d_ray.ownvideo.prepare import (
    CutList,
    OwnVideoConfig,
    PreparedClip,
    PreparedFailure,
    cut_list_uri,
    outcome_uri,
    prepare_video,
    prepared_clips,
)
from s4d_ray.synthetic.synth import make_texture
from tests.ownvideo_inputs import make_bad_videos

PERIOD_US = 33_333


def panning_shot(texture: np.ndarray, frames: int, start: int = 0) -> list[np.ndarray]:
    """SBS frames [128,256,3] of `texture` panned 2 px per frame (both halves alike)."""
    out = []
    for i in range(start, start + frames):
        eye = np.roll(texture, 2 * i, axis=1)[:128, :128]
        out.append(np.concatenate([eye, eye], axis=1))
    return out


def timed(frames: list[np.ndarray]) -> list[tuple[int, np.ndarray]]:
    return [(PERIOD_US * i, f) for i, f in enumerate(frames)]


def test_clips_split_at_cuts_skip_repeats_and_respect_lengths() -> None:
    rng = np.random.default_rng(0)
    shot_a = panning_shot(make_texture(rng, 256), 50)
    shot_a = shot_a[:20] + [shot_a[19]] * 3 + shot_a[20:]  # three repeated frames
    shot_b = panning_shot(make_texture(rng, 256), 40)
    config = ClipConfig(analysis_size=128, min_clip_frames=32)
    scan = scan_frames(iter(timed(shot_a + shot_b)), config)
    clips = split_clips(scan, config)
    assert [c.timestamps.size for c in clips] == [50, 40]
    assert clips[1].first_timestamp_us == PERIOD_US * 53  # the cut is where shot B starts
    repeats = PERIOD_US * np.array([20, 21, 22])
    assert not np.isin(repeats, clips[0].timestamps).any()
    # cut while the frames arrive: a run gives up 20 frames when it reaches 20 + 10, so no
    # more than 30 frames are ever held; shot A's last 10 frames still make a clip
    short = split_clips(scan, ClipConfig(analysis_size=128, min_clip_frames=10, max_clip_frames=20))
    assert [c.timestamps.size for c in short] == [20, 20, 10, 20, 20]
    tail = split_clips(scan, ClipConfig(analysis_size=128, min_clip_frames=10, max_clip_frames=45))
    assert [c.timestamps.size for c in tail] == [25, 25, 40]  # 50 > 45: two halves


@pytest.mark.parametrize(
    ("source_fps", "max_fps", "kept_per_second"),
    [(60, 30, 30), (59.94, 30, 30), (30, 30, 30), (29.97, 30, 30), (25, 30, 25), (30, 60, 30)],
)
def test_frame_rate_filter_keeps_at_most_the_rate(source_fps, max_fps, kept_per_second) -> None:
    """Frames chosen by their rounded presentation times: a source at or below the rate keeps
    every frame, a faster one is thinned to the rate, evenly."""
    times = [round(i * 1e6 / source_fps) for i in range(int(10 * source_fps))]
    rate = FrameRateFilter(max_fps)
    kept = [t for t in times if rate.keep(t)]
    assert abs(len(kept) - 10 * kept_per_second) <= 1
    gaps = np.diff(kept)
    assert gaps.max() <= 1e6 / kept_per_second + 1e6 / source_fps / 2


def test_a_60fps_slow_pan_is_read_at_30fps_and_not_taken_for_repeats(tmp_path) -> None:
    """A real 60 fps video panning 0.08 px a frame: at its own rate half its frames look like
    repeats (below `frozen_difference`) and would be skipped; read at the default rate (30 fps,
    chosen at decode) every kept frame is a frame of the clip. `--fps 60` keeps all of them."""
    from s4d_ray.io.video import write_video

    texture = make_texture(np.random.default_rng(3), 512)

    def frame(shift_px: float) -> np.ndarray:
        warp = np.float32([[1, 0, shift_px], [0, 1, 0]])
        eye = cv2.warpAffine(texture, warp, (512, 512), borderMode=cv2.BORDER_REFLECT)[:256, :256]
        return np.concatenate([eye, eye], axis=1)

    uri = str(tmp_path / "pan60.mp4")
    write_video(uri, [frame(0.08 * i) for i in range(60)], fps=60)
    default = ClipConfig(analysis_size=128, min_clip_frames=8)
    scan = scan_video(uri, default)
    assert scan.timestamps.size == 30
    assert set(np.diff(scan.timestamps)) <= {33_333, 33_334}
    assert not frame_flags(scan, default)[0].any(), "a frame of the slow pan taken for a repeat"
    native = ClipConfig(analysis_size=128, min_clip_frames=8, fps=60)
    native_scan = scan_video(uri, native)
    assert native_scan.timestamps.size == 60
    assert frame_flags(native_scan, native)[0].sum() >= 10  # why the default is 30 fps


def test_videos_without_a_clip_say_why() -> None:
    rng = np.random.default_rng(1)
    shot = panning_shot(make_texture(rng, 256), 40)
    config = ClipConfig(analysis_size=128)
    five = scan_frames(iter(timed(shot[:5])), config)
    assert split_clips(five, config) == []
    assert "5 frames" in no_clip_reason(five, config)
    frozen = scan_frames(iter(timed([shot[0]] * 40)), config)
    assert split_clips(frozen, config) == []
    assert "frozen" in no_clip_reason(frozen, config)
    flat = [np.full_like(shot[0], 80 + 2 * i) for i in range(40)]
    flat_scan = scan_frames(iter(timed(flat)), config)
    assert split_clips(flat_scan, config) == []
    assert "tracking breaks" in no_clip_reason(flat_scan, config)


def test_calibration_residual_is_zero_for_the_true_rig_and_gauge_free() -> None:
    rng = np.random.default_rng(2)
    rig = Rotation.from_rotvec(rng.normal(0, 0.01, (2, 3))).as_matrix()
    # scene points seen from a left eye at 0 and a right eye at +6.3 cm (rectified frame)
    points = rng.uniform([-5, -2, 1], [5, 2, 10], (200, 3))
    rect_l = points / np.linalg.norm(points, axis=1, keepdims=True)
    shifted = points - [0.063, 0, 0]
    rect_r = shifted / np.linalg.norm(shifted, axis=1, keepdims=True)
    rig_l, rig_r = rect_l @ rig[0].T, rect_r @ rig[1].T  # what the raw eyes see
    assert np.abs(epipolar_residuals(rig, rig_l, rig_r)).max() < 1e-9
    gauge = Rotation.from_rotvec([0.3, 0, 0]).as_matrix()
    assert np.abs(epipolar_residuals(rig @ gauge, rig_l, rig_r)).max() < 1e-9
    smallest = smallest_gauge(rig @ gauge)
    assert relative_eye_rotation_error_deg(smallest, rig) < 1e-9
    norms = np.linalg.norm(Rotation.from_matrix(smallest).as_rotvec(), axis=1)
    assert np.sum(norms**2) <= np.sum(
        np.linalg.norm(Rotation.from_matrix(rig).as_rotvec(), axis=1) ** 2
    )
    bent = rig.copy()
    bent[1] = rig[1] @ Rotation.from_rotvec([np.radians(0.1), 0, 0]).as_matrix()
    assert np.median(np.abs(epipolar_residuals(bent, rig_l, rig_r))) > 0.5  # 0.1° = 0.77 px


def test_epipolar_grid_rows_are_planes_through_the_baseline() -> None:
    """A point seen by a rectified pair falls on one row of the epipolar grid in both eyes,
    at any depth and angle off-centre: only its column differs (the horizontal disparity)."""
    half, grid_hw = (80.0, 70.0), (281, 321)
    centre = epipolar_rays(np.array([160.0, 140.0]), half, grid_hw)
    np.testing.assert_allclose(centre, [0, 0, 1], atol=1e-12)
    v, u = np.mgrid[0:281:20, 0:321:20].astype(np.float64)
    rays = epipolar_rays(np.stack([u, v], -1), half, grid_hw)
    phi = np.degrees(np.arctan2(rays[..., 1], rays[..., 2]))
    np.testing.assert_allclose(phi, phi[:, :1] * np.ones_like(phi), atol=1e-9)
    # a point 0.7 m away up and to the side, seen from eyes 63 mm apart on x
    point = np.array([0.5, 0.4, 0.3])
    rows = []
    for centre_x in (0.0, 0.063):
        ray = (point - [centre_x, 0, 0]) / np.linalg.norm(point - [centre_x, 0, 0])
        phi_deg = np.degrees(np.arctan2(ray[1], ray[2]))
        rows.append((phi_deg + half[1]) / (2 * half[1]) * (grid_hw[0] - 1))
    assert rows[0] == pytest.approx(rows[1], abs=1e-9)


def test_corners_on_straight_edges_are_not_matched() -> None:
    """The aperture problem: a point on a straight edge is ill-conditioned (ratio ≈ 0) and
    skipped; a corner of the same square is kept."""
    grey = np.full((120, 120), 60, np.uint8)
    grey[30:90, 30:90] = 200
    points = np.array([[30.0, 60.0], [30.0, 30.0]])  # middle of the left edge; top-left corner
    np.testing.assert_array_equal(well_conditioned(grey, points, 0.15), [False, True])


def test_corners_are_sought_in_every_part_of_the_field() -> None:
    """A strongly textured object on the left must not leave the faint right half without
    corners (the corners of the field are the only part that sees the eyes' yaw)."""
    rng = np.random.default_rng(0)
    grey = np.full((128, 256), 128, np.uint8)
    grey[:, :128] = rng.integers(0, 255, (128, 128))  # strong texture
    grey[:, 128:] += rng.integers(0, 4, (128, 128)).astype(np.uint8)  # faint texture
    mask = np.full(grey.shape, 255, np.uint8)
    one_threshold = cv2.goodFeaturesToTrack(grey, 400, 0.005, 7, mask=mask).reshape(-1, 2)
    assert (one_threshold[:, 0] >= 128).sum() == 0
    spread = spread_corners(grey, mask, 400, 2).reshape(-1, 2)
    assert (spread[:, 0] >= 128).sum() >= 50


def stereo_scene(rng: np.random.Generator, frames: int, num_points: int, low, high) -> dict:
    """A small forward camera motion [T] (frame 0 at the origin) over static points [P,3]
    drawn in the box [low, high] m, each seen in every frame: exact left and right pixels."""
    k = intrinsics(512, 512, 60.0)
    rot = Rotation.from_rotvec(np.cumsum(rng.normal(0, 0.01, (frames, 3)), 0)).as_matrix()
    rot[0] = np.eye(3)
    centres = np.cumsum(
        np.vstack([np.zeros(3), rng.normal([0, 0, 0.05], 0.01, (frames - 1, 3))]), 0
    )
    trans = -np.einsum("tij,tj->ti", rot, centres)
    points = rng.uniform(low, high, (num_points, 3))
    obs_point = np.repeat(np.arange(num_points), frames)
    obs_frame = np.tile(np.arange(frames), num_points)
    cam = np.einsum("mij,mj->mi", rot[obs_frame], points[obs_point]) + trans[obs_frame]
    right_cam = cam - [0.063, 0, 0]
    return {
        "k": k, "rot": rot, "trans": trans, "points": points,
        "obs_point": obs_point, "obs_frame": obs_frame,
        "left": cam[:, :2] / cam[:, 2:] * k[0, 0] + k[:2, 2],
        "right": right_cam[:, :2] / right_cam[:, 2:] * k[0, 0] + k[:2, 2],
    }  # fmt: skip


def test_bundle_adjustment_recovers_a_noise_free_stereo_trajectory() -> None:
    rng = np.random.default_rng(3)
    frames, num_points = 6, 150
    scene = stereo_scene(rng, frames, num_points, [-4, -2, 3], [4, 2, 12])
    k, rot, trans, points = scene["k"], scene["rot"], scene["trans"], scene["points"]
    obs_point, obs_frame = scene["obs_point"], scene["obs_frame"]
    left, right = scene["left"], scene["right"]
    config = PoseConfig()
    problem = BundleProblem(obs_point, obs_frame, left, right, k, config, frames, num_points)
    start = BundleState(
        rotations=Rotation.from_rotvec(rng.normal(0, 0.003, (frames, 3))).as_matrix() @ rot,
        translations=trans + rng.normal(0, 0.02, trans.shape),
        points=points * 1.05 + rng.normal(0, 0.05, points.shape),
        right_eye=np.eye(3),
    )
    start.rotations[0], start.translations[0] = np.eye(3), 0.0
    solved, _ = problem.solve(start)
    assert np.abs(problem.residuals(solved)).max() < 1e-4
    np.testing.assert_allclose(solved.translations, trans, atol=1e-5)  # metric: scale from stereo
    np.testing.assert_allclose(solved.points, points, rtol=1e-5, atol=1e-5)


def noisy_stereo_tracks(seed: int, frames: int, num_points: int, noise_px: tuple[float, float]):
    """SparseTracks of static points seen in every frame of a small forward motion, each
    point's pixels perturbed with its own noise level (graded over `noise_px`); and K."""
    rng = np.random.default_rng(seed)
    scene = stereo_scene(rng, frames, num_points, [-3, -2, 2], [3, 2, 6])
    obs_point, left, right = scene["obs_point"], scene["left"], scene["right"]
    sigma = np.linspace(*noise_px, num_points)
    left += rng.normal(0, 1, left.shape) * sigma[obs_point, None]
    right[:, 0] += rng.normal(0, 0.1, len(right)) * sigma[obs_point]
    right[:, 1] = left[:, 1]
    k = scene["k"]
    return SparseTracks(obs_point, scene["obs_frame"], left, right, num_points), k


def test_points_pruned_in_the_last_round_leave_consistent_figures() -> None:
    """Points whose residuals straddle prune_px are dropped in every pruning round; the
    figures after the last round were once computed on the previous round's problem, whose
    observations index removed points (IndexError: index 107 is out of bounds ... 107)."""
    tracks, k = noisy_stereo_tracks(seed=0, frames=8, num_points=400, noise_px=(0.05, 0.3))
    config = PoseConfig(
        prune_px=0.1, min_points=10, min_frame_inliers=3, max_rms_px=5, min_inlier_fraction=0
    )
    result = poses_from_tracks(tracks, 8, k, "noisy_0", config)
    assert len(result.iterations) == 3  # pruned after the first and the second solve
    assert result.points.shape == (result.num_points, 3)
    assert 10 <= result.num_points < 400
    assert 0 < result.inlier_fraction <= 1 and np.isfinite(result.rms_px)


def test_poses_of_a_clip_without_texture_are_a_failure_with_figures() -> None:
    flat = np.full((6, 128, 128, 3), 120, np.uint8)
    with pytest.raises(StageError, match="poses") as info:
        estimate_poses(flat, flat, "flatclip_0")
    assert "frame 1" in str(info.value) and "points" in str(info.value)


@pytest.fixture(scope="module")
def prepared(synth_dir: Path, tmp_path_factory) -> dict:
    """prepare_video on the first synthetic video (17 frames of 512-line equirect)."""
    out = tmp_path_factory.mktemp("ownvideo")
    video = sorted((synth_dir / "raw").glob("*.mp4"))[0]
    config = OwnVideoConfig(clips=ClipConfig(min_clip_frames=8))
    outcome = prepare_video(str(video), video.stem, str(out), config)
    return {"outcome": outcome, "out": out, "video": video, "config": config}


@pytest.mark.slow  # calibration + poses of a real synthetic video: ~6 s CPU, more on a busy machine
def test_own_video_becomes_a_posed_release_clip(prepared: dict, synth_dir: Path) -> None:
    outcome = prepared["outcome"]
    assert outcome.failures == [] and len(outcome.npz_uris) == 1
    record = read_clip(outcome.npz_uris[0])
    video_id = prepared["video"].stem
    assert record.name == f"{video_id}_0" and record.num_tracks == 0
    truth = read_clip(str(next((synth_dir / "npz").glob(f"{video_id}_*.npz"))))
    assert np.diff(record.timestamps).min() > 0
    index = np.searchsorted(record.timestamps, truth.timestamps)
    np.testing.assert_array_equal(record.timestamps[index], truth.timestamps)  # video's own µs
    np.testing.assert_allclose(record.camera2world[0], np.eye(4)[:3], atol=1e-6)
    # 512-line equirect (the 512² rectified view is upsampled 1.6×): looser than the 1024-line
    # figures of benchmarks/bench_ownvideo.py
    assert relative_eye_rotation_error_deg(record.rectified2rig, truth.rectified2rig) < 0.05
    assert float(record.extras["calibration_vertical_px"]) < 0.5
    estimate = record.camera2world[index]
    assert ate_se3(estimate, truth.camera2world).rmse < 0.03
    assert abs(ate_sim3(estimate, truth.camera2world).scale_error) < 0.15


@pytest.mark.slow
def test_calibration_is_stored_and_reused(prepared: dict) -> None:
    out, video = prepared["out"], prepared["video"]
    stored = Calibration.from_json(Path(calibration_uri(str(out), video.stem)).read_text())
    assert stored.median_vertical_px < stored.before_px
    # a re-run never touches the video: a missing file would fail if it were decoded again
    again = calibrate_video(str(video.with_name("absent.mp4")), video.stem, str(out))
    np.testing.assert_array_equal(again.rectified2rig, stored.rectified2rig)
    rerun = prepare_video(str(video.with_name("absent.mp4")), video.stem, str(out))
    assert rerun.npz_uris == prepared["outcome"].npz_uris
    assert json.loads(Path(out / "ownvideo" / "videos" / f"{video.stem}.json").read_text())


@pytest.mark.slow  # two clips calibrated and posed: ~15 s CPU
def test_a_video_killed_midway_resumes_with_only_its_missing_clips(
    synth_dir: Path, tmp_path: Path
) -> None:
    """The cut list and calibration are written before any clip, each clip as soon as it is
    posed. A re-run after a kill (no outcome file, one clip's npz missing) neither probes nor
    scans the video again and poses only the missing clip; with every clip written it never
    opens the video at all."""
    video = sorted((synth_dir / "raw").glob("*.mp4"))[0]
    out = tmp_path / "out"
    config = OwnVideoConfig(clips=ClipConfig(min_clip_frames=5, max_clip_frames=9))
    first = prepare_video(str(video), video.stem, str(out), config)
    assert first.failures == [] and len(first.npz_uris) == 2
    assert first.figures["cut_list_reused"] is False
    kept, lost = (Path(uri) for uri in first.npz_uris)
    kept_stat = kept.stat()
    lost.unlink()  # the clip in flight when the task was killed
    Path(outcome_uri(str(out), video.stem)).unlink()  # written only at the video's end

    second = prepare_video(str(video), video.stem, str(out), config)
    assert second.npz_uris == first.npz_uris and second.failures == []
    assert second.figures["cut_list_reused"] is True
    assert second.figures["clips_kept_from_earlier_run"] == 1
    assert "probe_seconds" not in second.figures and "clips_seconds" not in second.figures
    assert kept.stat().st_mtime_ns == kept_stat.st_mtime_ns  # not posed or written again
    np.testing.assert_array_equal(
        read_clip(str(lost)).timestamps, read_clip(first.npz_uris[1]).timestamps
    )

    Path(outcome_uri(str(out), video.stem)).unlink()
    absent = str(video.with_name("absent.mp4"))  # decoding it would fail the video
    third = prepare_video(absent, video.stem, str(out), config)
    assert third.npz_uris == first.npz_uris and third.failures == []
    assert third.figures["clips_kept_from_earlier_run"] == 2

    other = OwnVideoConfig(clips=ClipConfig(min_clip_frames=5, max_clip_frames=17))
    Path(outcome_uri(str(out), video.stem)).unlink()
    rescan = prepare_video(absent, video.stem, str(out), other)  # new clip settings: cut again
    assert rescan.figures["cut_list_reused"] is False and rescan.npz_uris == []
    assert [f.stage for f in rescan.failures] == ["probe"]


@pytest.mark.slow  # a 60 fps video calibrated and posed: ~15 s CPU
def test_one_pass_decodes_each_frame_once_and_hands_on_each_clip_as_it_is_cut(
    tmp_path: Path,
) -> None:
    """A 60 fps video read at 30 fps: the pass decodes each of its frames once and converts
    only the kept ones to RGB (calibration reads keyframes apart, grey); the first clip comes
    out before the video's last clip is cut, with the pipeline's views made from the pass's
    own frames — the same pixels the decode stage gets by decoding the clip again."""
    import av

    from s4d_ray.geometry.camera import RELEASE_CAMERA
    from s4d_ray.io.rectify import rectify_clip
    from s4d_ray.io.video_lookup import RawVideo
    from s4d_ray.synthetic.synth import SynthConfig, synth_clip

    synth_clip(str(tmp_path / "s"), SynthConfig(clips=1, frames=40, height=512, fps=60), 0)
    video = next((tmp_path / "s" / "raw").glob("*.mp4"))
    with av.open(str(video)) as container:
        source_frames = sum(1 for _ in container.decode(video=0))
    out = str(tmp_path / "out")
    config = OwnVideoConfig(clips=ClipConfig(min_clip_frames=6, max_clip_frames=10))
    figures: dict = {}
    items = prepared_clips(str(video), video.stem, out, config, figures, camera=RELEASE_CAMERA)
    first = next(items)
    assert isinstance(first, PreparedClip)
    cuts = CutList.from_json(Path(cut_list_uri(out, video.stem)).read_text())
    assert not cuts.complete and len(cuts.clips) == 1  # the rest not cut yet
    rest = list(items)
    assert all(isinstance(item, PreparedClip) for item in rest) and len(rest) >= 2
    decodes = figures["decodes"]
    assert decodes["pass"]["decoded"] == source_frames
    kept = sum(
        c.timestamps.size
        for c in CutList.from_json(Path(cut_list_uri(out, video.stem)).read_text()).clips
    )
    assert decodes["pass"]["rgb"] == (source_frames + 1) // 2 >= kept  # 30 of each 60 a second
    assert decodes["calibration"]["rgb"] == 0
    assert np.diff(first.record.timestamps).min() >= 33_000  # read at 30 fps

    again = rectify_clip(first.record, RawVideo(str(video), StereoFormat()))
    assert first.left.shape == again[0].shape == (first.record.num_frames, 512, 512, 3)
    for mine, theirs in ((first.left, again[0]), (first.right, again[1])):
        difference = np.abs(mine.astype(int) - theirs)
        assert difference.mean() < 0.05 and np.percentile(difference, 99.9) <= 2  # float32 rig


@pytest.mark.slow  # two clips calibrated and posed, then one again: ~15 s CPU
def test_a_pass_killed_mid_video_is_rerun_with_the_same_cuts(synth_dir: Path, tmp_path: Path):
    """Killed after its first clip (the cut list not complete): the re-run decodes the video
    again from its start, cuts it the same way, keeps the clip written and poses the rest."""
    video = sorted((synth_dir / "raw").glob("*.mp4"))[0]
    out = tmp_path / "out"
    config = OwnVideoConfig(clips=ClipConfig(min_clip_frames=5, max_clip_frames=9))
    items = prepared_clips(str(video), video.stem, str(out), config)
    first = next(items)
    items.close()  # the task dies here
    written = out / "ownvideo" / "npz" / f"{first.record.name}.npz"
    stat = written.stat()
    cuts = CutList.from_json(Path(cut_list_uri(str(out), video.stem)).read_text())
    assert not cuts.complete and not Path(outcome_uri(str(out), video.stem)).exists()

    rerun = prepare_video(str(video), video.stem, str(out), config)
    assert rerun.failures == [] and len(rerun.npz_uris) == 2
    assert rerun.figures["cut_list_reused"] is True
    assert rerun.figures["clips_kept_from_earlier_run"] == 1
    assert written.stat().st_mtime_ns == stat.st_mtime_ns
    assert Path(rerun.npz_uris[0]).stem == first.record.name
    assert CutList.from_json(Path(cut_list_uri(str(out), video.stem)).read_text()).complete


def test_a_video_past_its_time_limit_is_one_failure(synth_dir: Path, tmp_path: Path) -> None:
    video = sorted((synth_dir / "raw").glob("*.mp4"))[0]
    config = OwnVideoConfig(clips=ClipConfig(min_clip_frames=8), timeout_s=1e-3)
    (failure,) = list(prepared_clips(str(video), video.stem, str(tmp_path), config))
    assert isinstance(failure, PreparedFailure) and failure.clip_id == video.stem
    assert (failure.stage, failure.error_type) == ("prepare", "VideoTimeoutError")
    assert "--video-timeout-s" in failure.message


def test_bad_videos_are_one_failure_each(synth_dir: Path, tmp_path: Path) -> None:
    good = sorted((synth_dir / "raw").glob("*.mp4"))[0]
    bad = make_bad_videos(str(good), tmp_path / "raw")
    config = OwnVideoConfig(clips=ClipConfig(min_clip_frames=8))
    expected = {
        "monovid": ("probe", "not a stereo video"),
        "staticvid": ("clips", "frozen"),
        "flatvid": ("probe", "no texture"),
        "shortvid": ("clips", "5 frames"),
    }
    for name, (stage, words) in expected.items():
        outcome = prepare_video(bad[name], name, str(tmp_path / "out"), config)
        assert outcome.npz_uris == []
        assert [(f.clip_id, f.stage) for f in outcome.failures] == [(name, stage)]
        assert words in outcome.failures[0].message


def test_pose_qa_rows_for_release_clips(synth_dir: Path, tmp_path: Path, capsys) -> None:
    from s4d_ray.cli import main
    from s4d_ray.ownvideo.qa import format_table, pose_qa

    npz = sorted((synth_dir / "npz").glob("*.npz"))[0]
    argv = ["poses", "--npz", str(npz), "--videos", str(synth_dir / "raw")]
    assert main([*argv, "--out", str(tmp_path / "qa.json")]) == 0  # `s4d poses`
    assert npz.stem in capsys.readouterr().out
    rows = json.loads((tmp_path / "qa.json").read_text())
    assert rows[0]["error"] == "" and rows[0]["frames"] == 12
    assert rows[0]["ate_se3_m"] < 0.03 and rows[0]["rotation_error_deg"] < 0.5
    missing = pose_qa([str(npz)], str(synth_dir / "nowhere"))
    assert "no raw video of id" in missing[0]["error"] and np.isnan(missing[0]["ate_se3_m"])
    table = format_table(rows + missing)
    assert npz.stem in table and "failed" in table
