"""Bad own-video inputs made from a good synthetic VR180 video (for tests and the benchmark)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from s4d_ray.io.video import write_video
from s4d_ray.ownvideo.clips import iter_video_frames


def make_bad_videos(good_video: str, out_dir: Path, fps: float = 30.0) -> dict[str, str]:
    """Write four bad videos beside each other; returns {kind: path}.

    mono: each frame is the left eye stretched over the whole SBS frame (the two halves show
    different content, as a monoscopic 2:1 video); static: the first frame repeated; flat: no
    texture at all (a uniform frame whose brightness drifts, so it is not frozen); short: the
    first 5 frames.
    """
    frames = [frame for _, frame in iter_video_frames(good_video)]
    height, width = frames[0].shape[:2]
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {
        "monovid": [cv2.resize(f[:, : width // 2], (width, height)) for f in frames],
        "staticvid": [frames[0]] * len(frames),
        "flatvid": [np.full_like(frames[0], 90 + 2 * i) for i in range(len(frames))],
        "shortvid": frames[:5],
    }
    paths = {}
    for name, video in made.items():
        path = out_dir / f"{name}.mp4"
        write_video(str(path), video, fps=fps)
        paths[name] = str(path)
    return paths
