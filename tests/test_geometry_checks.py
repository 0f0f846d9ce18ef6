"""The calibration's trust checks over the whole field: a wrong field of view, a fisheye read as
equirect and swapped eyes are refused naming the cause; the right geometry of each kind passes."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from s4d_ray.errors import StageError
from s4d_ray.io.stereo_format import StereoFormat
from s4d_ray.ownvideo.calibration import CalibrationConfig, calibrate_frames
from s4d_ray.synthetic.synth import SynthConfig, build_scene, render_stereo_frame, synth_format

HEIGHT = 512
FRAMES = 4


@cache
def rendered(seed: int = 3, **kind) -> tuple[StereoFormat, tuple[np.ndarray, ...]]:
    """(format, raw frames) of one synthetic scene packed as `kind` (no encoding: exact)."""
    config = SynthConfig(height=HEIGHT, seed=seed, **kind)
    scene = build_scene(np.random.default_rng([config.seed, 0]), 4)
    fmt, frame_hw = synth_format(config)
    times = np.linspace(0.0, 1.0, FRAMES)
    return fmt, tuple(render_stereo_frame(scene, t, fmt, frame_hw) for t in times)


CONFIG = CalibrationConfig(frames=FRAMES)


@pytest.mark.parametrize(
    "kind",
    [{}, {"layout": "top-bottom"}, {"projection": "fisheye"}, {"fov_deg": 166.0}],
    ids=["left-right", "top-bottom", "fisheye190", "equirect166"],
)
def test_the_right_geometry_passes_with_a_field_scale_near_one(kind) -> None:
    fmt, frames = rendered(**kind)
    calibration = calibrate_frames(list(frames), "v", CONFIG, fmt)
    assert abs(calibration.field_scale - 1.0) < 0.02
    assert calibration.median_vertical_px < 0.5


def test_a_field_of_view_eight_percent_off_is_refused_naming_the_field() -> None:
    fmt, frames = rendered(fov_deg=166.0)
    as_180 = replace(fmt, fov_bounds=(-90.0, 90.0, -90.0, 90.0))
    with pytest.raises(StageError, match="field of view 0.9") as info:
        calibrate_frames(list(frames), "v", CONFIG, as_180)
    assert info.value.stage == "calibration" and "sidecar" in info.value.message


def test_a_field_of_view_five_percent_too_narrow_is_refused() -> None:
    fmt, frames = rendered()
    narrow = replace(fmt, fov_bounds=(-85.5, 85.5, -85.5, 85.5))
    with pytest.raises(StageError, match="wrong geometry"):
        calibrate_frames(list(frames), "v", CONFIG, narrow)


def test_a_fisheye_read_as_equirect_is_refused() -> None:
    _, frames = rendered(projection="fisheye")
    with pytest.raises(StageError, match="wrong geometry|not trustworthy"):
        calibrate_frames(list(frames), "v", CONFIG, StereoFormat())


def test_swapped_eyes_are_named() -> None:
    fmt, frames = rendered(layout="right-left")
    with pytest.raises(StageError, match="eyes look swapped"):
        calibrate_frames(list(frames), "v", CONFIG, replace(fmt, layout="left-right"))
    assert calibrate_frames(list(frames), "v", CONFIG, fmt).field_scale == pytest.approx(
        1, abs=0.02
    )


def test_edge_matches_that_bias_the_field_are_left_out() -> None:
    """Scene 1's corners on straight edges slide along them between the eyes; with them
    matched (and every match kept) the matches favour a field 12 % narrower. Without them
    the true field is found."""
    fmt, frames = rendered(seed=1)
    calibration = calibrate_frames(list(frames), "v", CONFIG, fmt)
    assert calibration.field_scale == pytest.approx(1, abs=0.02)


def test_a_scene_whose_matches_are_biased_the_same_way_is_refused() -> None:
    """Scene 1 with its edge corners matched and no match dropped: every group of frames
    favours a field 10 % narrower, so the video is refused as wrong geometry (with the true
    field: kept, such a bias puts the depth scale 20 % off)."""
    fmt, frames = rendered(seed=1)
    keep_all = replace(CONFIG, min_eigen_ratio=0.0, trim_mads=1e9, trim_floor_px=1e9)
    with pytest.raises(StageError, match="wrong geometry.*every group of frames agrees"):
        calibrate_frames(list(frames), "v", keep_all, fmt)
