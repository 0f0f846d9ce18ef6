"""The tracking stage on synthetic clips with known motion: Lucas-Kanade accuracy, visibility,
query pruning, and the TAPIR backend against direct model calls."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
import torch

from s4d_ray.stages.tracking import TapirBackend, Tracker, Tracks2D, tapir_query_chunk_size
from s4d_ray.track.queries import _farther_than, query_grid, track_with_pruning

SIZE = 96
FRAMES = 21
OCCLUDER = 24  # px side of the square occluder
BASE = 256  # px side of the background texture


def smooth_texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), sigma)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (noise * 255).astype(np.uint8)


def background_motion(t: int) -> np.ndarray:
    """[2,3] affine, texture px -> frame px (OpenCV pixel-centre coordinates): rotation 0.3 deg,
    zoom 0.2 % and shift (1.3, 0.6) px per frame."""
    angle, scale = np.deg2rad(0.3 * t), 1.0 + 0.002 * t
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = np.array([SIZE / 2 + 1.3 * t, SIZE / 2 + 0.6 * t]) - rotation @ [BASE / 2, BASE / 2]
    return np.concatenate([rotation, shift[:, None]], axis=1)


def occluder_corner(t: int) -> np.ndarray:
    """Top-left (x, y) px of the occluder: it crosses the frame at (-3, +1) px per frame."""
    return np.array([70.0 - 3 * t, 20.0 + t])


def synthetic_clip(seed: int, noise: float = 2.0) -> np.ndarray:
    """frames [T,SIZE,SIZE,3] uint8: a moving textured background under a square occluder."""
    rng = np.random.default_rng(seed)
    background = smooth_texture(rng, BASE, 1.5)
    occluder = smooth_texture(rng, OCCLUDER, 1.2)
    frames = []
    for t in range(FRAMES):
        frame = cv2.warpAffine(
            background, background_motion(t), (SIZE, SIZE), flags=cv2.INTER_LINEAR
        )
        x, y = occluder_corner(t).astype(int)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + OCCLUDER, SIZE), min(y + OCCLUDER, SIZE)
        if x1 > x0 and y1 > y0:
            frame[y0:y1, x0:x1] = occluder[y0 - y : y1 - y, x0 - x : x1 - x]
        frames.append(frame + rng.normal(0.0, noise, frame.shape))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def ground_truth(result: Tracks2D) -> dict[str, np.ndarray]:
    """True positions [N,T,2] px (pixel centres at +0.5) and visibility of every returned track."""
    count = len(result.tracks)
    queries = result.tracks[np.arange(count), result.query_frame].astype(np.float64)
    corners = np.stack([occluder_corner(t) for t in range(FRAMES)])
    motions = np.stack([background_motion(t) for t in range(FRAMES)])
    at_query = queries - corners[result.query_frame]
    on_occluder = np.all((at_query >= 0) & (at_query < OCCLUDER), axis=1)
    positions = np.empty((count, FRAMES, 2))
    for i in range(count):
        if on_occluder[i]:
            positions[i] = queries[i] + corners - corners[result.query_frame[i]]
        else:
            motion = motions[result.query_frame[i]]
            texture_point = np.linalg.solve(motion[:, :2], queries[i] - 0.5 - motion[:, 2])
            positions[i] = motions[:, :, :2] @ texture_point + motions[:, :, 2] + 0.5
    relative = positions - corners[None]
    under = np.all((relative >= 0) & (relative < OCCLUDER), axis=-1)
    deep_under = np.all((relative >= 3) & (relative < OCCLUDER - 3), axis=-1)
    inside = np.all((positions >= 0) & (positions < SIZE), axis=-1)
    far_outside = np.any((positions < -1) | (positions > SIZE + 1), axis=-1)
    background = ~on_occluder[:, None]
    return {
        "positions": positions,
        "visible": inside & (~under | ~background),
        "background": np.broadcast_to(background, inside.shape),
        "deep_occluded": background & deep_under,
        "far_outside": far_outside,
    }


@pytest.fixture(scope="module")
def cpu_result() -> Tracks2D:
    return Tracker("cpu", query_stride=4, seed=3)(synthetic_clip(seed=0))


def test_cpu_tracks_follow_the_known_motion(cpu_result: Tracks2D) -> None:
    truth = ground_truth(cpu_result)
    error = np.linalg.norm(cpu_result.tracks - truth["positions"], axis=-1)
    scored = truth["visible"] & cpu_result.visible
    # Lucas-Kanade on a well-textured, bilinearly warped image is good to ~0.05 px per step and
    # chains at most 20 steps here (measured median 0.05 px, 95th percentile 0.35 px); one frame
    # of lag alone would cost ~1.4 px, and a point that slid onto the occluder tens of px.
    assert np.median(error[scored]) < 0.25
    assert np.percentile(error[scored], 95) < 1.0
    # Points are kept for most of the frames where they truly are visible (measured 0.81).
    visible_background = truth["visible"] & truth["background"]
    assert cpu_result.visible[visible_background].mean() > 0.7


def test_cpu_marks_occluded_and_out_of_image_points_invisible(cpu_result: Tracks2D) -> None:
    truth = ground_truth(cpu_result)
    assert truth["deep_occluded"].sum() > 300 and truth["far_outside"].sum() > 1000
    assert cpu_result.visible[truth["deep_occluded"]].mean() < 0.02  # measured 0.001
    assert not cpu_result.visible[truth["far_outside"]].any()
    # Once lost, a Lucas-Kanade track stays lost: along each direction from its query frame
    # visibility never switches back on.
    frames = np.arange(FRAMES)
    for track_visible, query in zip(cpu_result.visible, cpu_result.query_frame, strict=True):
        forward = track_visible[frames >= query]
        backward = track_visible[frames <= query][::-1]
        for run in (forward, backward):
            assert np.all(np.diff(run.astype(int)) <= 0)


def test_cpu_result_layout_and_query_pruning(cpu_result: Tracks2D) -> None:
    tracks, visible, query_frame = cpu_result
    count = len(tracks)
    assert tracks.shape == (count, FRAMES, 2) and tracks.dtype == np.float32
    assert visible.shape == (count, FRAMES) and visible.dtype == bool
    assert query_frame.dtype == np.int64 and np.all(np.diff(query_frame) >= 0)
    assert set(query_frame.tolist()) == {0, 10, 20}
    assert np.sum(query_frame == 0) == (SIZE // 4) ** 2
    queries = tracks[np.arange(count), query_frame]
    assert visible[np.arange(count), query_frame].all()
    assert np.array_equal(queries, np.round(queries))  # the jittered grid is integer-valued
    for frame in (10, 20):
        new = query_frame == frame
        earlier = (query_frame < frame) & visible[:, frame]
        distance = np.linalg.norm(queries[new][:, None] - tracks[earlier, frame][None], axis=-1)
        assert distance.min() > 1.0
        assert 0 < new.sum() < (SIZE // 4) ** 2  # some pruned, disoccluded regions re-seeded


def test_tracker_is_deterministic_per_seed() -> None:
    clip = synthetic_clip(seed=1)[:11, :48, :48]
    tracker = Tracker("cpu", query_stride=8, seed=5)
    first, again = tracker(clip), tracker(clip)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)
    other = tracker(clip, seed=6)
    assert not np.array_equal(first.tracks[:, 0], other.tracks[: len(first.tracks), 0])


def test_tracker_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="backend"):
        Tracker("gpu")
    with pytest.raises(ValueError, match="not an option of the cpu tracking backend"):
        Tracker("cpu", precision="bf16")
    with pytest.raises(ValueError, match="query_stride: must be >= 1"):
        Tracker("cpu", query_stride=0)
    with pytest.raises(ValueError, match="uint8"):
        Tracker("cpu")(np.zeros((3, 16, 16, 3), np.float32))


def test_query_chunk_size_fits_memory() -> None:
    gib = 1 << 30
    assert tapir_query_chunk_size(80 * gib, 200, "fp32") == 512
    assert tapir_query_chunk_size(80 * gib, 200, "bf16") == 1024
    assert tapir_query_chunk_size(8 * gib, 200, "fp32") == 64
    assert tapir_query_chunk_size(1 << 20, 200, "fp32") == 1
    sizes = [tapir_query_chunk_size(m * gib, 100) for m in (4, 16, 64)]
    assert sizes == sorted(sizes)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine more threads spin and run ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_tapir() -> torch.nn.Module:
    """Random-weight TAPIR at a 32x32 initial resolution, one refinement step per level."""
    from s4d_ray.models.tapir import TAPIR

    torch.manual_seed(0)
    return TAPIR(initial_resolution=(32, 32), num_pips_iter=1).eval()


def numpy_visibility(occlusion: np.ndarray, expected_dist: np.ndarray) -> np.ndarray:
    return (1 - 1 / (1 + np.exp(-occlusion))) * (1 - 1 / (1 + np.exp(-expected_dist))) > 0.5


def test_neural_backend_matches_direct_model_calls(one_torch_thread) -> None:
    model = small_tapir()
    texture = smooth_texture(np.random.default_rng(0), 48, 1.5)
    clip = np.stack([texture[:24, t : t + 24] for t in range(11)])  # moves 1 px/frame left
    stride, resolution = 8, 32  # model input 32x32: query and track coordinates scale by 4/3
    backend = TapirBackend(model, query_chunk_size=4, resolution=resolution)
    result = Tracks2D(
        *track_with_pruning(backend(clip), 11, 24, 24, stride, 10, 1.0, np.random.default_rng(4))
    )

    # Independently: the model on the resized clip, query grids drawn from the same seed.
    resized = np.stack(
        [cv2.resize(f, (resolution, resolution), interpolation=cv2.INTER_AREA) for f in clip]
    )
    with torch.inference_mode():
        grids = model.get_feature_grids(torch.from_numpy(resized)[None].float() / 255 * 2 - 1)
    grid_rng = np.random.default_rng(4)
    queries = [query_grid(24, 24, stride, grid_rng) for _ in (0, 10)]
    scale = resolution / 24

    def direct(frame: int, points_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tyx = np.concatenate([np.full((len(points_xy), 1), frame), points_xy[:, ::-1] * scale], 1)
        with torch.inference_mode():
            out = model.track_with_grids(grids, torch.from_numpy(tyx).float()[None], 1000)
        visible = numpy_visibility(out["occlusion"][0].numpy(), out["expected_dist"][0].numpy())
        return out["tracks"][0].numpy() / scale, visible

    first_tracks, first_visible = direct(0, queries[0])
    keep = _farther_than(queries[1], first_tracks[first_visible[:, 10], 10], 1.0)
    second_tracks, second_visible = direct(10, queries[1][keep])
    assert np.array_equal(result.query_frame, np.repeat([0, 10], [len(queries[0]), keep.sum()]))
    np.testing.assert_allclose(
        result.tracks, np.concatenate([first_tracks, second_tracks]), atol=1e-3
    )
    assert np.mean(result.visible == np.concatenate([first_visible, second_visible])) > 0.99


def test_neural_backend_runs_in_bf16(one_torch_thread) -> None:
    """bf16 autocast (fp16 takes the same path; on CPU it is emulated and far too slow)."""
    clip = smooth_texture(np.random.default_rng(1), 32, 1.5)[None].repeat(3, axis=0)
    backend = TapirBackend(small_tapir(), precision="bf16", resolution=32)
    tracks, visible = backend(clip)(0, query_grid(32, 32, 8))
    assert tracks.shape == (16, 3, 2) and tracks.dtype == np.float32
    assert visible.shape == (16, 3) and visible.dtype == bool
    assert np.isfinite(tracks).all()


@pytest.mark.slow
def test_neural_tracker_loads_an_official_format_checkpoint(tmp_path, one_torch_thread) -> None:
    """Full-size BootsTAP with random weights, saved as a plain state dict like the real file."""
    from s4d_ray.models.tapir import TAPIR

    torch.manual_seed(0)
    checkpoint = tmp_path / "bootstapir_checkpoint_v2.pt"
    torch.save(TAPIR().state_dict(), checkpoint)
    tracker = Tracker("neural", weights_uri=str(checkpoint), query_stride=8, resolution=32)
    clip = smooth_texture(np.random.default_rng(2), 32, 1.5)[None].repeat(2, axis=0)
    tracks, visible, query_frame = tracker(clip)
    assert tracks.shape == (16, 2, 2) and visible.shape == (16, 2)
    assert np.array_equal(query_frame, np.zeros(16, np.int64))
    assert np.isfinite(tracks).all()
    provenance = tracker.provenance()
    assert provenance["model"] == "bootstap-tapir" and provenance["backend"] == "neural"
    assert provenance["config"]["resolution"] == 32 and provenance["config"]["query_stride"] == 8
    assert provenance["weights_uri"] == str(checkpoint)
    assert provenance["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
