"""Rectification geometry pinned on synthetic VR180 ground truth, plus bad-input handling."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

from s4d_ray.errors import VideoError
from s4d_ray.geometry.camera import RECTIFIED_HFOV_DEG, STEREO_BASELINE_M, focal_length_px
from s4d_ray.geometry.rectify import (
    LowResolutionWarning,
    check_vr180_frame_size,
    rectify_frame_two_step,
)
from s4d_ray.io import fs
from s4d_ray.io.clip_io import ClipRecord, ClipValidationError, read_clip, write_clip
from s4d_ray.io.ids import UnsafeIdError
from s4d_ray.io.rectify import rectify_clip, rectify_to_files
from s4d_ray.io.video import decode_frames_at, probe_video
from s4d_ray.synthetic.synth import load_ground_truth

warnings.simplefilter("ignore", LowResolutionWarning)


def clip_ids(synth_dir) -> list[str]:
    return sorted(p.stem for p in (synth_dir / "npz").glob("*.npz"))


def load(synth_dir, clip_id):
    record = read_clip(str(synth_dir / "npz" / f"{clip_id}.npz"))
    video = str(synth_dir / "raw" / f"{record.video_id}.mp4")
    return record, video, load_ground_truth(str(synth_dir), clip_id)


def lk_offsets(src: np.ndarray, dst: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Where `points [K,2]` of `src` moved to in `dst` (pyramidal LK) minus where they were.

    [K,2] px, NaN for points LK lost.
    """
    grey = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in (src, dst)]
    p0 = points.astype(np.float32).reshape(-1, 1, 2)
    p1, status, _ = cv2.calcOpticalFlowPyrLK(
        grey[0], grey[1], p0, None, winSize=(21, 21), maxLevel=3
    )
    offsets = (p1 - p0)[:, 0].astype(np.float64)
    offsets[status[:, 0] != 1] = np.nan
    return offsets


def static_points(gt, frame: int, margin: int = 24) -> np.ndarray:
    """GT pixel positions of static, visible track points at `frame`, away from the border."""
    px = gt["tracks_2d"][:, frame]
    sel = gt["visible"][:, frame] & (gt["track_object_ids"] == 0)
    sel &= np.all((px > margin) & (px < 512 - margin), axis=1)
    sel &= (
        gt["depth"][frame][px[:, 1].astype(int).clip(0, 511), px[:, 0].astype(int).clip(0, 511)] > 0
    )
    return px[sel]


def test_ground_truth_points_land_where_the_camera_says(synth_dir):
    """Our rectified left frame matches the direct perspective render at GT point locations."""
    record, video, gt = load(synth_dir, clip_ids(synth_dir)[0])
    left, _ = rectify_clip(record, video)
    biases, cell_errors = [], []
    for f in (0, record.num_frames // 2, record.num_frames - 1):
        pts = static_points(gt, f)
        assert len(pts) > 50
        # GT render -> our frame: the points must not move. Single LK measurements between the
        # sharp render and the decoded, 3x-upsampled video are noisy (~0.5 px), so check the
        # median offset per frame (systematic error) and per 128 px cell (local error).
        offsets = lk_offsets(gt["rgb"][f], left[f], pts)
        biases.append(np.linalg.norm(np.nanmedian(offsets, axis=0)))
        cells = (pts // 128).astype(int) @ np.array([1, 4])
        for cell in np.unique(cells):
            sel = cells == cell
            if sel.sum() >= 15:
                cell_errors.append(np.linalg.norm(np.nanmedian(offsets[sel], axis=0)))
    assert max(biases) < 0.15, f"systematic misplacement {max(biases):.3f} px"
    assert len(cell_errors) >= 10
    assert max(cell_errors) < 1.0, f"misplacement in some image cell: {max(cell_errors):.3f} px"

    # negative control: ignoring the rig calibration misplaces points by pixels
    uncalibrated = ClipRecord(**{**record.__dict__, "rectified2rig": np.tile(np.eye(3), (2, 1, 1))})
    left_bad, _ = rectify_clip(uncalibrated, video)
    pts = static_points(gt, 0)
    bad = float(np.nanmedian(np.linalg.norm(lk_offsets(gt["rgb"][0], left_bad[0], pts), axis=1)))
    assert bad > 2.0, f"uncalibrated misplacement only {bad:.2f} px: test would not catch it"


def test_rectified_pairs_have_no_vertical_disparity(synth_dir):
    record, video, gt = load(synth_dir, clip_ids(synth_dir)[0])
    left, right = rectify_clip(record, video)
    k = focal_length_px(512, RECTIFIED_HFOV_DEG)
    dys, disparity_errors = [], []
    for f in range(0, record.num_frames, 3):
        pts = static_points(gt, f, margin=48)
        offsets = lk_offsets(left[f], right[f], pts)
        dys.append(np.abs(offsets[:, 1]))
        depth = gt["depth"][f][pts[:, 1].astype(int), pts[:, 0].astype(int)]
        expected = k * STEREO_BASELINE_M / depth  # disparity, px
        disparity_errors.append(np.abs(-offsets[:, 0] - expected))
    vertical = float(np.nanmedian(np.concatenate(dys)))
    assert vertical < 0.5, f"median vertical disparity {vertical:.3f} px"
    # the horizontal disparity is the metric one (sanity check of baseline and focal length)
    assert float(np.nanmedian(np.concatenate(disparity_errors))) < 1.0


def test_composed_map_equals_two_step_reference(synth_dir):
    record, video, _ = load(synth_dir, clip_ids(synth_dir)[1])
    left, right = rectify_clip(record, video)
    psnrs = []
    for i, frame in enumerate(decode_frames_at(video, record.timestamps[:4])):
        ref_left, ref_right = rectify_frame_two_step(frame, record.rectified2rig, record.fov_bounds)
        psnrs += [cv2.PSNR(ref_left, left[i]), cv2.PSNR(ref_right, right[i])]
    assert min(psnrs) >= 40.0, f"PSNR composed vs two-step: {min(psnrs):.1f} dB"


def test_rectify_cli_writes_reference_layout(synth_dir, tmp_path):
    clip_id = clip_ids(synth_dir)[0]
    out = tmp_path / "processed"
    result = subprocess.run(
        [
            sys.executable, "-m", "s4d_ray.cli", "rectify", "--vid", clip_id,
            "--npz_folder", str(synth_dir / "npz"),
            "--raw_video_folder", str(synth_dir / "raw"),
            "--output_folder", str(out),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "below 1920 lines" in result.stderr
    for eye in ("left", "right"):
        path = out / clip_id / f"{clip_id}-{eye}_rectified.mp4"
        info = probe_video(str(path))
        assert (info.width, info.height) == (512, 512)
        frames = list(decode_frames_at(str(path), np.arange(12) * 33333 + 1))
        assert len(frames) == 12


def test_rectify_writes_to_gcs(synth_dir, gcs_bucket):
    clip_id = clip_ids(synth_dir)[0]
    record = read_clip(str(synth_dir / "npz" / f"{clip_id}.npz"))
    fs.write_bytes(
        f"{gcs_bucket}/npz/{clip_id}.npz", (synth_dir / "npz" / f"{clip_id}.npz").read_bytes()
    )
    video = (synth_dir / "raw" / f"{record.video_id}.mp4").read_bytes()
    fs.write_bytes(f"{gcs_bucket}/raw/{record.video_id}.mp4", video)
    left_uri, _ = rectify_to_files(
        clip_id, f"{gcs_bucket}/npz", f"{gcs_bucket}/raw", f"{gcs_bucket}/out"
    )
    assert fs.exists(left_uri) and left_uri.startswith("gs://")
    assert len(fs.read_bytes(left_uri)) > 1000


# --- bad inputs --------------------------------------------------------------------------


@pytest.fixture
def one_clip(synth_dir, tmp_path):
    """A private copy of one synth clip (npz + raw video) that a test may damage."""
    clip_id = clip_ids(synth_dir)[0]
    record = read_clip(str(synth_dir / "npz" / f"{clip_id}.npz"))
    (tmp_path / "npz").mkdir()
    (tmp_path / "raw").mkdir()
    shutil.copy(synth_dir / "npz" / f"{clip_id}.npz", tmp_path / "npz")
    shutil.copy(synth_dir / "raw" / f"{record.video_id}.mp4", tmp_path / "raw")
    return tmp_path, clip_id, record


def run_rectify(root, clip_id):
    return rectify_to_files(clip_id, str(root / "npz"), str(root / "raw"), str(root / "out"))


def test_truncated_video_is_a_clear_error(one_clip):
    root, clip_id, record = one_clip
    path = root / "raw" / f"{record.video_id}.mp4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(VideoError, match=rf"{clip_id}.*rectify"):
        run_rectify(root, clip_id)


def test_timestamps_past_the_end(one_clip):
    root, clip_id, record = one_clip
    record.timestamps = record.timestamps + 10_000_000
    record.name = f"{record.video_id}_{record.timestamps[0]}"
    write_clip(record, str(root / "npz" / f"{record.name}.npz"))
    with pytest.raises(VideoError, match=r"past the end"):
        run_rectify(root, record.name)


def test_npz_missing_field(one_clip):
    root, clip_id, record = one_clip
    arrays = record.to_arrays()
    del arrays["fov_bounds"]
    np.savez(root / "npz" / f"{clip_id}.npz", **arrays)
    with pytest.raises(ClipValidationError, match=rf"{clip_id}.*fov_bounds"):
        run_rectify(root, clip_id)


def test_unsafe_id(one_clip):
    root, _, _ = one_clip
    with pytest.raises(UnsafeIdError):
        run_rectify(root, "../x")
    result = subprocess.run(
        [sys.executable, "-m", "s4d_ray.cli", "rectify", "--vid", "../x"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "invalid clip id" in result.stderr


def test_not_a_video(one_clip):
    root, clip_id, record = one_clip
    (root / "raw" / f"{record.video_id}.mp4").write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match=r"cannot open video"):
        run_rectify(root, clip_id)


@pytest.mark.parametrize(
    ("width", "height"), [(1920, 1920), (1921, 1080), (1280, 1920), (640, 480)]
)
def test_non_vr180_frames_are_rejected(width, height):
    with pytest.raises(VideoError, match="not"):
        check_vr180_frame_size(width, height, "abc_1")


def test_low_resolution_warns():
    with pytest.warns(LowResolutionWarning, match="below 1920"):
        check_vr180_frame_size(2048, 1024, "abc_1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_vr180_frame_size(3840, 1920, "abc_1")


def test_grey_rectification_is_the_colour_one_in_grey(synth_dir):
    """Posing takes grey views (a third of the memory): converted before the remap, they
    differ from the colour views converted after by rounding only."""
    record, video, _ = load(synth_dir, clip_ids(synth_dir)[0])
    colour, _ = rectify_clip(record, video)
    grey, _ = rectify_clip(record, video, grey=True)
    assert grey.shape == colour.shape[:3] and grey.dtype == np.uint8
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in colour]).astype(int)
    assert np.abs(grey.astype(int) - expected).max() <= 2
