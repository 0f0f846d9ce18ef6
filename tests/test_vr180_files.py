"""Every kind of stereo file people have, end to end: the projection maths of
`geometry/vr180.py` for each layout and projection, the `.s4d.json` sidecar and the precedence
of `io/stereo_format.py`, `s4d probe` on synthetic videos of each kind (and the ones it must
refuse), and rectification of the non-default kinds against the synthetic ground truth."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from s4d_ray.geometry.vr180 import (
    OUTSIDE,
    eye_box,
    eye_pixel_rays,
    eye_pixels_to_rays,
    rays_to_eye_pixels,
    split_eyes,
)
from s4d_ray.io.clip_io import ClipRecord, read_clip
from s4d_ray.io.rectify import rectify_clip
from s4d_ray.io.stereo_format import (
    LAYOUTS,
    MAX_SIDECAR_BYTES,
    StereoFormat,
    StereoFormatError,
    read_sidecar,
    resolve_format,
    sidecar_uri,
    symmetric_bounds,
)
from s4d_ray.io.video import write_video
from s4d_ray.io.video_lookup import (
    VIDEO_FORMAT_EXTRA,
    RawVideo,
    carried_format,
    find_raw_video,
    release_format,
    video_id_of_name,
)
from s4d_ray.ownvideo.clips import iter_video_frames
from s4d_ray.ownvideo.probe import ProbeError, ProbeReport, decide_format, probe
from s4d_ray.synthetic.synth import (
    SynthConfig,
    load_ground_truth,
    render_rectified,
    scene_of,
    synth_clip,
    synth_format,
)

# ---------------------------------------------------------------------------------------------
# Geometry: every layout × projection


def _fisheye_190(part_hw: tuple[int, int]) -> StereoFormat:
    """A 190° fisheye whose two circles are off the part's centre, each its own way."""
    h, w = part_hw
    return StereoFormat(
        projection="fisheye",
        fov_bounds=symmetric_bounds(190.0, "fisheye"),
        fisheye_centres_px=(
            ((w - 1) / 2 + 1.3, (h - 1) / 2 - 0.8),
            ((w - 1) / 2 - 0.9, (h - 1) / 2 + 1.1),
        ),
        fisheye_radius_px=0.46 * min(h, w),
    )


PART_HW = (36, 52)
"""Each eye's part (h, w): not square, so a swapped axis shows."""
PROJECTIONS = {
    "equirect180": StereoFormat(fov_bounds=(-90.0, 90.0, -90.0, 90.0)),
    "equirect360": StereoFormat(fov_bounds=(-180.0, 180.0, -90.0, 90.0)),
    "cropped": StereoFormat(fov_bounds=(-90.0, 90.0, -75.0, 75.0)),
    "fisheye190": _fisheye_190(PART_HW),
}


def _ray(lon_deg: float, lat_deg: float) -> np.ndarray:
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    return np.array([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)])


OUTSIDE_RAYS = {
    "equirect180": [_ray(135, 0), _ray(-100, 10), [0.0, 0.0, -1.0]],
    "equirect360": [],  # the whole sphere is inside
    "cropped": [_ray(0, 80), _ray(20, -80), _ray(120, 0)],
    "fisheye190": [_ray(100, 0), _ray(0, 97), _ray(-180, 0), [0.0, 0.0, -1.0]],
}


def _frame_hw(layout: str, part_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = part_hw
    return (h, 2 * w) if layout in ("left-right", "right-left") else (2 * h, w)


@pytest.mark.parametrize("projection", list(PROJECTIONS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_eye_pixel_rays_round_trip_to_own_frame_pixels(layout, projection):
    fmt = replace(PROJECTIONS[projection], layout=layout)
    frame_hw = _frame_hw(layout, PART_HW)
    h, w = PART_HW
    gu, gv = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    for eye in range(2):
        top, left, bh, bw = eye_box(fmt, eye, frame_hw)
        assert (bh, bw) == PART_HW
        rays, inside = eye_pixel_rays(fmt, eye, frame_hw)
        assert rays.shape == (h, w, 3) and inside.shape == (h, w)
        np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1.0, atol=1e-12)
        u, v = rays_to_eye_pixels(rays, fmt, eye, frame_hw)
        error = np.hypot(u - (gu + left), v - (gv + top))[inside]
        assert error.max() < 1e-3, (eye, float(error.max()))
        if fmt.projection == "fisheye":
            # the part's corners are outside the circle: their rays are behind the field
            disc = np.pi * fmt.fisheye_radius_px**2
            assert abs(inside.sum() - disc) < 0.05 * disc and inside.sum() < inside.size
            assert (u[~inside] == OUTSIDE).all() and (v[~inside] == OUTSIDE).all()
        else:
            assert inside.all()
        # the same pixels through the part-coordinate entry point give the same rays
        part_rays, part_inside = eye_pixels_to_rays(np.stack([gu, gv], -1), fmt, eye, PART_HW)
        np.testing.assert_allclose(part_rays, rays, atol=1e-12)
        np.testing.assert_array_equal(part_inside, inside)
        # rays outside the eye's field map to -1, never into either eye
        outside = np.asarray(OUTSIDE_RAYS[projection], np.float64).reshape(-1, 3)
        if len(outside):
            u, v = rays_to_eye_pixels(outside, fmt, eye, frame_hw)
            assert (u == OUTSIDE).all() and (v == OUTSIDE).all(), (u, v)


def test_fisheye_centres_are_per_eye():
    """Off-centre circles: the straight-ahead ray lands on each eye's own circle centre."""
    fmt = replace(PROJECTIONS["fisheye190"], layout="left-right")
    frame_hw = _frame_hw(fmt.layout, PART_HW)
    for eye in range(2):
        u, v = rays_to_eye_pixels(np.array([0.0, 0.0, 1.0]), fmt, eye, frame_hw)
        cx, cy = fmt.fisheye_centres_px[eye]
        assert abs(float(u) - (cx + eye * PART_HW[1])) < 1e-4 and abs(float(v) - cy) < 1e-4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eye_boxes_tile_the_frame(layout):
    fmt = StereoFormat(layout=layout)
    frame_hw = _frame_hw(layout, PART_HW)
    height, width = frame_hw
    cover = np.zeros(frame_hw, int)
    boxes = [eye_box(fmt, eye, frame_hw) for eye in range(2)]
    for top, left, h, w in boxes:
        cover[top : top + h, left : left + w] += 1
    assert (cover == 1).all()  # no overlap, nothing left out
    left_eye = boxes[0]
    expected_left_eye = {
        "left-right": (0, 0),
        "right-left": (0, width // 2),  # the left eye is the right half
        "top-bottom": (0, 0),
        "bottom-top": (height // 2, 0),
    }[layout]
    assert left_eye[:2] == expected_left_eye
    frame = np.arange(height * width).reshape(height, width)
    for part, (top, left, h, w) in zip(split_eyes(frame, fmt), boxes, strict=True):
        np.testing.assert_array_equal(part, frame[top : top + h, left : left + w])


# ---------------------------------------------------------------------------------------------
# Sidecar and precedence


def _write_sidecar(video: Path, content) -> Path:
    path = Path(sidecar_uri(str(video)))
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_sidecar_fov_bounds_are_left_right_bottom_top(tmp_path):
    video = tmp_path / "trip.mp4"
    _write_sidecar(video, {"fov_bounds": [-80, 70, -50, 60]})  # 50° down, 60° up
    values = read_sidecar(str(video))
    assert list(values["fov_bounds"]) == [-80, 70, -60, 50]  # tilt grows downwards
    fmt = resolve_format([("sidecar", values)], str(video))
    assert fmt.fov_bounds == (-80.0, 70.0, -60.0, 50.0)
    assert fmt.sources["fov_bounds"] == "sidecar"
    assert "150°×110°" in fmt.describe()
    assert read_sidecar(str(tmp_path / "none.mp4")) == {}


@pytest.mark.parametrize(
    ("projection", "fov", "bounds"),
    [
        ("fisheye", 200.0, (-100.0, 100.0, -100.0, 100.0)),  # square, may see behind
        ("equirect", 360.0, (-180.0, 180.0, -90.0, 90.0)),  # latitude stops at ±90
        ("equirect", 120.0, (-60.0, 60.0, -60.0, 60.0)),
    ],
)
def test_sidecar_fov_deg_gives_symmetric_bounds_of_the_projection(
    tmp_path, projection, fov, bounds
):
    assert symmetric_bounds(fov, projection) == bounds
    video = tmp_path / "v.mp4"
    _write_sidecar(video, {"projection": projection, "fov_deg": fov})
    fmt = resolve_format([("sidecar", read_sidecar(str(video)))], str(video))
    assert fmt.fov_bounds == bounds and fmt.projection == projection
    assert fmt.sources["fov_bounds"] == "sidecar"
    # fov_deg applies to the projection whichever source gives it
    split = resolve_format(
        [("sidecar", {"fov_deg": fov}), ("metadata", {"projection": projection})], "v"
    )
    assert split.fov_bounds == bounds


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ({"layout": "left-right", "eyes": 2}, "unknown keys"),
        ({"fov_deg": 180, "fov_bounds": [-90, 90, -90, 90]}, "not both"),
        ({"layout": "side-by-side"}, "layout"),
        ({"projection": "cubemap"}, "projection"),
        ({"fov_bounds": [-90, 90, 80, -80]}, "fov_bounds"),  # bottom above top
        ({"fov_deg": 400}, "fov_deg"),
        ('{"layout": "left-right",}', "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"layout": "left-right"' + " " * MAX_SIDECAR_BYTES + "}", "bytes"),
    ],
    ids=[
        "unknown-key",
        "both-fields",
        "bad-layout",
        "bad-projection",
        "bad-bounds",
        "bad-fov",
        "bad-json",
        "binary",
        "not-object",
        "too-big",
    ],
)
def test_bad_sidecar_is_refused_naming_it(tmp_path, content, says):
    video = tmp_path / "my video.mp4"
    path = Path(sidecar_uri(str(video)))
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _write_sidecar(video, content)
    with pytest.raises(StereoFormatError) as caught:
        read_sidecar(str(video))
    assert str(path) in str(caught.value) and says in str(caught.value)


def test_precedence_sidecar_over_metadata_over_content_over_default():
    sources = [
        ("sidecar", {"layout": "top-bottom", "baseline_m": None}),  # None: not given
        ("metadata", {"layout": "left-right", "fov_bounds": (-90.0, 90.0, -60.0, 60.0)}),
        (
            "content",
            {
                "layout": "bottom-top",
                "fov_bounds": (-10.0, 10.0, -10.0, 10.0),
                "projection": "equirect",
            },
        ),
    ]
    fmt = resolve_format(sources, "video.mp4")
    assert fmt.layout == "top-bottom" and fmt.fov_bounds == (-90.0, 90.0, -60.0, 60.0)
    assert fmt.baseline_m == StereoFormat().baseline_m
    assert fmt.sources == {
        "layout": "sidecar",
        "fov_bounds": "metadata",
        "projection": "content",
        "baseline_m": "default",
        "fisheye_centres_px": "default",
        "fisheye_radius_px": "default",
    }
    # a default with its own sources (the release's) keeps them
    release = StereoFormat(fov_bounds=(-90.0, 90.0, -80.0, 80.0), sources={"fov_bounds": "release"})
    fmt = resolve_format([("metadata", {"layout": "left-right"})], "v", release)
    assert fmt.fov_bounds == (-90.0, 90.0, -80.0, 80.0) and fmt.sources["fov_bounds"] == "release"
    # a fisheye with no field of its own is 180°
    fish = resolve_format([("sidecar", {"projection": "fisheye"})], "v")
    assert fish.fov_bounds == (-90.0, 90.0, -90.0, 90.0) and fish.sources["fov_bounds"] == "default"


# ---------------------------------------------------------------------------------------------
# Synthetic videos of every kind (rendered once per module, on demand)

KINDS: dict[str, tuple[int, dict]] = {
    # (eye height px, SynthConfig fields); the first four are also rectified (256 px)
    "lr_mp4": (256, {}),
    "tb_mkv_meta": (256, {"layout": "top-bottom", "container": "mkv", "metadata": True}),
    "rl_webm_title": (
        256,
        {"layout": "right-left", "container": "webm", "metadata": True, "title": "My trip"},
    ),
    "fisheye_sidecar": (256, {"projection": "fisheye", "fov_deg": 190.0, "sidecar": True}),
    "lr_mp4_meta": (128, {"metadata": True}),
    "tb_mkv_plain": (128, {"layout": "top-bottom", "container": "mkv"}),
    "equirect360_meta": (128, {"fov_deg": 360.0, "metadata": True}),
    "cropped_meta": (128, {"fov_bounds": (-90.0, 90.0, -75.0, 75.0), "metadata": True}),
    "squeezed": (128, {"eye_width": 96}),
    "fisheye_bare": (128, {"projection": "fisheye", "fov_deg": 190.0}),
}


@dataclass(frozen=True)
class Synth:
    out: Path
    clip_id: str
    config: SynthConfig
    raw: Path

    @property
    def fmt(self) -> StereoFormat:
        return synth_format(self.config)[0]

    def record(self, extras=(VIDEO_FORMAT_EXTRA,)) -> ClipRecord:
        return read_clip(str(self.out / "npz" / f"{self.clip_id}.npz"), extras=extras)

    def copy_video(self, folder: Path, name: str | None = None) -> Path:
        """The raw video alone (no sidecar) under `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(self.raw, folder / (name or self.raw.name)))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    made: dict[str, Synth] = {}

    def get(kind: str) -> Synth:
        if kind not in made:
            height, fields = KINDS[kind]
            config = SynthConfig(clips=1, frames=6, height=height, tracks=50, **fields)
            out = tmp_path_factory.mktemp(kind)
            clip_id = synth_clip(str(out), config, 0)
            videos = [p for p in (out / "raw").iterdir() if not p.name.endswith(".s4d.json")]
            assert len(videos) == 1
            made[kind] = Synth(out, clip_id, config, videos[0])
        return made[kind]

    return get


def assert_same_format(found: StereoFormat, expected: StereoFormat) -> None:
    assert found.layout == expected.layout
    assert found.projection == expected.projection
    np.testing.assert_allclose(found.fov_bounds, expected.fov_bounds, atol=1e-4)
    if expected.projection == "fisheye":
        np.testing.assert_allclose(found.fisheye_centres_px, expected.fisheye_centres_px, atol=1e-3)
        assert abs(found.fisheye_radius_px - expected.fisheye_radius_px) < 1e-3
    assert found.baseline_m == pytest.approx(expected.baseline_m)


EXPECTED_SOURCES = {
    "lr_mp4": {"layout": "content", "projection": "default", "fov_bounds": "default"},
    "lr_mp4_meta": {"layout": "metadata", "projection": "metadata", "fov_bounds": "metadata"},
    "tb_mkv_meta": {"layout": "metadata", "projection": "default"},
    "tb_mkv_plain": {"layout": "content", "projection": "default"},
    "rl_webm_title": {"layout": "metadata"},
    "fisheye_sidecar": {
        "layout": "sidecar",
        "projection": "sidecar",
        "fov_bounds": "sidecar",
        "fisheye_centres_px": "sidecar",
        "fisheye_radius_px": "sidecar",
    },
    "equirect360_meta": {"layout": "metadata", "fov_bounds": "metadata"},
    "cropped_meta": {"layout": "metadata", "fov_bounds": "metadata"},
    "squeezed": {"layout": "content", "fov_bounds": "default"},
}


@pytest.mark.parametrize("kind", list(EXPECTED_SOURCES))
def test_probe_finds_the_rendered_format(synth, kind):
    made = synth(kind)
    report = probe(str(made.raw))
    assert not report.refused, report.refused
    assert_same_format(report.format, made.fmt)
    # what rendered the file; the release's own kind carries none (the release's default)
    rendered = carried_format(made.record()) or release_format(made.record())
    assert_same_format(report.format, rendered)
    for name, source in EXPECTED_SOURCES[kind].items():
        assert report.format.sources[name] == source, (name, report.format.sources)
    height, width = synth_format(made.config)[1]
    assert (report.height, report.width) == (height, width)
    table = report.table()
    assert "verdict" in table and "use: " + report.format.describe() in table
    assert json.loads(json.dumps(report.to_json_dict()))["format"]["layout"] == made.fmt.layout
    corr_lr, corr_tb = report.content["halves_corr_lr"], report.content["halves_corr_tb"]
    if made.fmt.layout in ("top-bottom", "bottom-top"):
        assert corr_tb > corr_lr
    else:
        assert corr_lr > corr_tb
    if kind == "rl_webm_title":
        record = made.record()
        assert made.raw.name == f"My trip [{record.video_id}].webm"
        assert video_id_of_name(made.raw.name) == record.video_id
        assert find_raw_video(str(made.out / "raw"), record).uri == str(made.raw)
    if kind == "fisheye_sidecar":
        written = json.loads(Path(sidecar_uri(str(made.raw))).read_text())
        assert report.sidecar is not None
        assert [list(c) for c in report.format.fisheye_centres_px] == written["fisheye_centres_px"]
        assert report.format.fisheye_radius_px == written["fisheye_radius_px"]
        assert report.format.fov_deg == written["fov_deg"] == 190.0
        # the content check sees the same circles
        for seen, truth in zip(
            report.content["fisheye_circles_px"], made.fmt.fisheye_centres_px, strict=True
        ):
            assert np.hypot(seen[0] - truth[0], seen[1] - truth[1]) < 1.0


def test_probe_sidecar_overrides_metadata(synth, tmp_path):
    """A 360° file whose sidecar says 180°: the sidecar wins, the rest stays the metadata's."""
    video = synth("equirect360_meta").copy_video(tmp_path)
    _write_sidecar(video, {"fov_deg": 180})
    report = probe(str(video))
    assert not report.refused, report.refused
    assert report.format.fov_bounds == (-90.0, 90.0, -90.0, 90.0)
    assert report.format.sources["fov_bounds"] == "sidecar"
    assert report.format.sources["layout"] == "metadata"
    assert report.format.sources["projection"] == "metadata"


def test_probe_fills_fisheye_circles_from_the_black_border(synth, tmp_path):
    made = synth("fisheye_bare")
    video = made.copy_video(tmp_path)
    _write_sidecar(video, {"layout": "left-right", "projection": "fisheye", "fov_deg": 190})
    report = probe(str(video))
    assert not report.refused, report.refused
    fmt, truth = report.format, made.fmt
    assert fmt.sources["fisheye_centres_px"] == "content"
    assert fmt.sources["fisheye_radius_px"] == "content"
    assert fmt.sources["fov_bounds"] == "sidecar" and fmt.fov_bounds == truth.fov_bounds
    for found, expected in zip(fmt.fisheye_centres_px, truth.fisheye_centres_px, strict=True):
        assert np.hypot(found[0] - expected[0], found[1] - expected[1]) < 1.0, (found, expected)
    assert abs(fmt.fisheye_radius_px - truth.fisheye_radius_px) < 1.0


# ---------------------------------------------------------------------------------------------
# Refusals


def test_probe_refuses_an_undeclared_fisheye(synth):
    report = probe(str(synth("fisheye_bare").raw))
    assert report.format is None
    assert "fisheye" in report.refused and "sidecar" in report.refused
    assert "refused: " in report.table()
    json.dumps(report.to_json_dict())


def test_probe_refuses_a_mono_video_quickly(synth, tmp_path):
    frames = [frame for _, frame in iter_video_frames(str(synth("lr_mp4").raw))]
    height, width = frames[0].shape[:2]
    mono = [cv2.resize(f[:, : width // 2], (width, height)) for f in frames]
    video = tmp_path / "monovid.mp4"
    write_video(str(video), mono)
    report = probe(str(video))
    assert report.format is None and "stereo" in report.refused, report.refused
    with pytest.raises(ProbeError) as caught:
        decide_format(str(video), "monovid", ProbeReport(uri=str(video)))
    assert caught.value.stage == "probe" and caught.value.clip_id == "monovid"


def test_probe_refuses_a_sidecar_that_contradicts_the_content(synth, tmp_path):
    video = synth("tb_mkv_plain").copy_video(tmp_path)
    _write_sidecar(video, {"layout": "left-right"})
    report = probe(str(video))
    assert report.format is None
    assert "left-right" in report.refused and "top-bottom" in report.refused, report.refused
    assert "sidecar" in report.refused


def test_probe_refuses_a_sidecar_that_is_not_json(synth, tmp_path):
    video = synth("lr_mp4_meta").copy_video(tmp_path)
    path = _write_sidecar(video, '{"layout": left-right}')
    report = probe(str(video))
    assert report.format is None
    assert str(path) in report.refused and "not JSON" in report.refused, report.refused


# ---------------------------------------------------------------------------------------------
# Rectification of every kind against the ground truth


def _rectified_error(made: Synth, fmt: StereoFormat | None = None) -> float:
    """Mean absolute RGB difference of the rectified left view of frame 0 from the exact
    render of the rectified left camera at that time."""
    record = made.record()
    video = find_raw_video(str(made.out / "raw"), record)
    if fmt is not None:
        video = RawVideo(video.uri, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # below 1920 px: LowResolutionWarning
        left, _ = rectify_clip(record, video)
    truth = load_ground_truth(str(made.out), made.clip_id)
    view = render_rectified(scene_of(truth), float(truth["clip_times"][0]), eye=0)["rgb"]
    return float(np.abs(left[0].astype(np.float64) - view.astype(np.float64)).mean())


def test_rectification_of_every_kind_matches_the_ground_truth(synth):
    baseline = _rectified_error(synth("lr_mp4"))
    assert baseline < 12.0, baseline  # the release's kind: only resampling differences
    limit = 1.5 * baseline
    for kind in ("tb_mkv_meta", "rl_webm_title", "fisheye_sidecar"):
        made = synth(kind)
        # the lookup finds the format whether the clip carries it or only the file declares it
        video = find_raw_video(str(made.out / "raw"), made.record())
        assert_same_format(video.format, made.fmt)
        declared = find_raw_video(str(made.out / "raw"), made.record(extras=()))
        assert_same_format(declared.format, made.fmt)
        error = _rectified_error(made)
        assert error < limit, (kind, error, baseline)
    # the comparison can fail: the fisheye read as equirect, the right-left eyes swapped
    fish = synth("fisheye_sidecar")
    wrong = _rectified_error(fish, StereoFormat())
    assert wrong > limit, (wrong, baseline)
    swapped = replace(synth("rl_webm_title").fmt, layout="left-right")
    wrong = _rectified_error(synth("rl_webm_title"), swapped)
    assert wrong > limit, (wrong, baseline)


def test_s4d_probe_prints_a_table_or_json_and_exits_1_on_a_refusal(synth, capsys):
    from s4d_ray.cli import main

    good, bad = str(synth("tb_mkv_meta").raw), str(synth("fisheye_bare").raw)
    assert main(["probe", good]) == 0
    table = capsys.readouterr().out
    assert "use: top-bottom equirect 180°×180°" in table and "layout from metadata" in table
    assert main(["probe", "--json", good, bad]) == 1
    reports = json.loads(capsys.readouterr().out)
    assert [r["format"] is None for r in reports] == [False, True]
    assert reports[0]["metadata"]["stereo_mode"] == "top-bottom"
    assert reports[0]["format"]["sources"]["layout"] == "metadata"
    assert main(["probe", "--headers-only", bad]) == 0  # no content checks: nothing refuses it
