"""Own-video mode of the main job through real local Ray (`ray job submit`, no `--npz`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from s4d_ray.io.clip_io import read_clip
from s4d_ray.synthetic.synth import SynthConfig, synth_clip
from tests.ownvideo_inputs import make_bad_videos, make_odd_videos
from tests.test_engine import ray_head, submit  # noqa: F401 - the module's own Ray head

pytestmark = pytest.mark.slow


def test_job_without_npz_splits_calibrates_poses_and_runs_the_pipeline(
    ray_head,  # noqa: F811
    synth_dir: Path,
    tmp_path: Path,
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    good = sorted((synth_dir / "raw").glob("*.mp4"))[0]
    # the same scene as `good`, packed top-bottom in Matroska with StereoMode, and yt-dlp's
    # name in capitals: found by id at preparation and again at decode, read top-bottom by both
    kind = SynthConfig(
        clips=1, frames=12, height=512, seed=7, tracks=50, layout="top-bottom", container="mkv"
    )
    synth_clip(str(tmp_path / "tb"), replace(kind, metadata=True), 0)
    shutil.copy(
        tmp_path / "tb" / "raw" / f"{good.stem}.mkv", videos / f"My VR180 trip [{good.stem}].MKV"
    )
    bad = make_bad_videos(str(good), tmp_path / "bad")
    for name in ("staticvid", "shortvid"):
        shutil.copy(bad[name], videos / f"{name}.mp4")
    odd = make_odd_videos(tmp_path / "odd")
    shutil.copy(odd["far_start"], videos / "far_start.mp4")  # once aborted the whole job
    shutil.copy(odd["tiny"], videos / "dupe.mp4")
    shutil.copy(odd["tiny"], videos / "Copy [dupe].webm")
    output = tmp_path / "out"
    args = ("--videos", str(videos), "--output", str(output), "--min-clip-frames", "8")
    result = submit(ray_head, *args)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    clip_id = f"{good.stem}_0"
    record = read_clip(str(output / "npz" / f"{clip_id}.npz"))
    assert record.num_tracks > 0 and record.num_frames == 17  # the whole 17-frame video
    np.testing.assert_allclose(record.camera2world[0], np.eye(4)[:3], atol=1e-5)
    truth = read_clip(str(next((synth_dir / "npz").glob(f"{good.stem}_*.npz"))))
    # the video's own µs: Matroska stores frame times in ms
    nearest = record.timestamps[np.searchsorted(record.timestamps, truth.timestamps - 500)]
    np.testing.assert_allclose(nearest, truth.timestamps, atol=500)
    calibration = json.loads((output / "calibration" / f"{good.stem}.json").read_text())
    np.testing.assert_allclose(record.rectified2rig, calibration["rectified2rig"], atol=1e-6)
    np.testing.assert_allclose(record.fov_bounds, [-90, 90, -90, 90])
    video_format = json.loads(str(record.extras["video_format"]))
    assert video_format["layout"] == "top-bottom"
    assert video_format["sources"]["layout"] == "metadata"
    assert calibration["video_format"]["layout"] == "top-bottom"

    failures = pq.read_table(output / "failures").to_pylist()
    by_id = {row["clip_id"]: row for row in failures}
    assert set(by_id) == {"staticvid", "shortvid", "far_start", "dupe"}
    assert by_id["far_start"]["stage"] == "clips" and "outside [0," in by_id["far_start"]["message"]
    assert "Copy [dupe].webm" in by_id["dupe"]["message"]
    assert by_id["staticvid"]["stage"] == "clips" and "frozen" in by_id["staticvid"]["message"]
    assert "5 frames" in by_id["shortvid"]["message"]

    mtime = (output / "calibration" / f"{good.stem}.json").stat().st_mtime
    again = submit(ray_head, *args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert (output / "calibration" / f"{good.stem}.json").stat().st_mtime == mtime
    assert '"clips_skipped": 1' in again.stdout


def test_a_failing_or_hanging_video_task_is_one_failure_row(ray_head) -> None:  # noqa: F811
    """The driver once gathered the video tasks with one bare `ray.get`: one task's error
    failed the whole job. Now each is that video's failure row, and a task past the
    per-video timeout is cancelled and reported."""
    import time

    import ray

    from s4d_ray.ownvideo.distributed import _gather
    from s4d_ray.ownvideo.prepare import VideoOutcome

    def prepare(video_id: str, seconds: float = 0.0) -> VideoOutcome:
        if video_id == "broken":
            raise OSError("disk full writing the calibration")
        time.sleep(seconds)
        return VideoOutcome(video_id=video_id)

    ray.init(address=ray_head["address"])
    try:
        task = ray.remote(num_cpus=0.1, max_retries=0)(prepare)
        pending = {
            task.remote("fine"): "fine",
            task.remote("broken"): "broken",
            task.remote("stuck", 600.0): "stuck",
        }
        start = time.monotonic()
        outcomes, failures = _gather(pending, timeout_s=8.0)
        assert time.monotonic() - start < 30
    finally:
        ray.shutdown()
    assert [o.video_id for o in outcomes] == ["fine"]
    by_id = {f.clip_id: f for f in failures}
    assert by_id["broken"].error_type == "OSError" and "disk full" in by_id["broken"].message
    assert by_id["stuck"].error_type == "StageTimeoutError"
    assert "--video-timeout-s" in by_id["stuck"].message
