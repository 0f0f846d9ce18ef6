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
from tests.ownvideo_inputs import make_bad_videos, make_odd_videos, one_synthetic_video
from tests.test_engine import parquet_names, ray_head, submit  # noqa: F401 - the module's own Ray head

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
    # found reading the calibration frames, before any clip is cut
    assert by_id["far_start"]["stage"] == "calibration"
    assert "outside [0," in by_id["far_start"]["message"]
    assert "Copy [dupe].webm" in by_id["dupe"]["message"]
    assert by_id["staticvid"]["stage"] == "clips" and "frozen" in by_id["staticvid"]["message"]
    assert "5 frames" in by_id["shortvid"]["message"]

    mtime = (output / "calibration" / f"{good.stem}.json").stat().st_mtime
    again = submit(ray_head, *args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert (output / "calibration" / f"{good.stem}.json").stat().st_mtime == mtime
    assert '"clips_skipped": 1' in again.stdout


def test_a_video_task_killed_mid_video_loses_only_its_clip_in_flight(
    ray_head,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The read task of a video is SIGKILLed after it cut its first clip, while it is still
    cutting the rest: Ray runs it again from the stored cut list, the clips it had handed on
    are not handed on twice (the task yields the same clips in the same order), clips posed
    (by the `poses` stage, in tasks of their own) before the kill are not posed again, and
    every clip is written exactly once."""
    import os
    import signal
    import threading
    import time

    import psutil

    videos, video = one_synthetic_video(tmp_path, frames=60, seed=3)
    output = tmp_path / "out"
    posed = output / "ownvideo" / "npz"
    cuts = output / "ownvideo" / "cuts" / f"{video.stem}.json"
    killed: list[int] = []
    before_kill: dict[str, int] = {}

    def kill_the_pass() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if cuts.exists():
                before_kill.update({p.name: p.stat().st_mtime_ns for p in posed.glob("*.npz")})
                for process in psutil.process_iter(["pid", "cmdline"]):
                    if "ReadOwnVideos" in " ".join(process.info["cmdline"] or []):
                        os.kill(process.info["pid"], signal.SIGKILL)
                        killed.append(process.info["pid"])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_pass)
    killer.start()
    args = ("--videos", str(videos), "--output", str(output))
    result = submit(ray_head, *args, "--min-clip-frames", "8", "--max-clip-frames", "12")
    killer.join()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert killed, "the video's read task was not found running"
    outcome = json.loads((output / "ownvideo" / "videos" / f"{video.stem}.json").read_text())
    clips = sorted(Path(uri).stem for uri in outcome["npz_uris"])
    assert len(clips) >= 4 and outcome["failures"] == []
    after = {name: (posed / name).stat().st_mtime_ns for name in before_kill}
    assert after == before_kill  # posed before the kill, not again
    assert outcome["figures"]["cut_list_reused"] is True
    assert sorted(parquet_names(output)) == clips  # each clip once
    assert sorted(p.stem for p in (output / "npz").glob("*.npz")) == clips
    summary = json.loads((output / "summary.json").read_text())
    assert summary["clips_done"] == len(clips) and summary["clips_failed"] == 0
