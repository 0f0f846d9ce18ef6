"""Own-video poses over several synthetic streets at a real resolution (1024-line eyes, 40
frames, camera paths of 0.5–1.2 m): a plain street, one with large movers (about a third of
the view moving) and one mostly beyond 10 m, each through the whole own-video path (cuts,
calibration, poses) against the exact trajectory. The ten-scene sweeps behind the bounds
are in `benchmarks/bench_ownvideo.py` and docs/own-videos.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s4d_ray.geometry.pose_metrics import ate_se3, ate_sim3
from s4d_ray.io.clip_io import read_clip
from s4d_ray.ownvideo.prepare import prepare_video
from s4d_ray.synthetic.synth import SceneShape, SynthConfig, synth_clip

pytestmark = pytest.mark.slow  # three 1024-line videos rendered, calibrated and posed: ~3 min

STREETS = {
    "plain": SceneShape(),
    "large-movers": SceneShape(mover_scale=2.5),
    "far": SceneShape(depth_scale=2.5),
}


@pytest.mark.parametrize("street", sorted(STREETS))
def test_poses_of_own_videos_are_metric(street: str, tmp_path: Path) -> None:
    config = SynthConfig(clips=1, frames=40, height=1024, seed=3, shape=STREETS[street])
    clip_id = synth_clip(str(tmp_path / "synth"), config, 0)
    truth = read_clip(str(tmp_path / "synth" / "npz" / f"{clip_id}.npz"))
    video = tmp_path / "synth" / "raw" / f"{truth.video_id}.mp4"
    outcome = prepare_video(str(video), truth.video_id, str(tmp_path / "out"))
    assert outcome.failures == [] and len(outcome.npz_uris) == 1
    record = read_clip(outcome.npz_uris[0])
    index = np.searchsorted(record.timestamps, truth.timestamps)
    estimate = record.camera2world[index]
    path_m = np.linalg.norm(np.diff(truth.camera2world[:, :, 3], axis=0), axis=1).sum()
    assert path_m >= 0.5
    assert ate_se3(estimate, truth.camera2world).rmse <= 0.02
    assert abs(ate_sim3(estimate, truth.camera2world).scale_error) <= 0.03
