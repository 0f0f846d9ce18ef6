"""Pose QA of release clips: re-estimate each clip's camera trajectory from its video and report
the agreement with the release poses (ATE after SE(3) and Sim(3), scale, rotation, RPE).

The clip is rectified with the release's own `rectified2rig`, so the comparison isolates the
trajectory. A clip whose release poses disagree with ours far beyond the synthetic-benchmark
figures (centimetres, < 1 %) is worth a look: either our estimate failed (its row says so) or
the release poses are off.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from s4d_ray.errors import StageError
from s4d_ray.geometry.pose_metrics import ate_se3, ate_sim3, rpe
from s4d_ray.io.clip_io import read_clip
from s4d_ray.io.rectify import rectify_clip
from s4d_ray.io.video_lookup import find_raw_video
from s4d_ray.ownvideo.poses import PoseConfig, estimate_poses

log = logging.getLogger(__name__)

QA_COLUMNS = (
    "clip_id",
    "frames",
    "ate_se3_m",
    "ate_sim3_m",
    "scale_error",
    "rotation_error_deg",
    "rpe_translation_m",
    "rpe_rotation_deg",
    "release_path_m",
    "points",
    "rms_px",
    "seconds",
    "error",
)


def qa_clip(npz_uri: str, videos_uri: str, config: PoseConfig | None = None) -> dict:
    """One QA row (see QA_COLUMNS) for the release clip at `npz_uri`; `error` is empty when
    the re-estimation worked, else says why (and the figures are NaN)."""
    start = time.perf_counter()
    row: dict = {c: float("nan") for c in QA_COLUMNS}
    row.update(clip_id=npz_uri.rsplit("/", 1)[-1].removesuffix(".npz"), error="", frames=0)
    try:
        record = read_clip(npz_uri)
        row["clip_id"], row["frames"] = record.name, record.num_frames
        video = find_raw_video(videos_uri, record, "poses")
        left, right = rectify_clip(record, video)
        poses = estimate_poses(left, right, record.name, config=config)
        release = record.camera2world
        se3, sim3 = ate_se3(poses.camera2world, release), ate_sim3(poses.camera2world, release)
        rel = rpe(poses.camera2world, release)
        steps = np.linalg.norm(np.diff(release[:, :, 3], axis=0), axis=1)
        row.update(
            ate_se3_m=se3.rmse,
            ate_sim3_m=sim3.rmse,
            scale_error=sim3.scale_error,
            rotation_error_deg=se3.rotation_deg,
            rpe_translation_m=rel.translation_rmse,
            rpe_rotation_deg=rel.rotation_rmse_deg,
            release_path_m=float(steps.sum()),
            points=poses.num_points,
            rms_px=poses.rms_px,
        )
    # one row per bad clip, the others go on: unreadable inputs, a failed estimate, or metrics
    # undefined for the clip (a static camera has no Sim(3) alignment: ValueError)
    except (StageError, ValueError, ArithmeticError, OSError) as error:
        row["error"] = f"{type(error).__name__}: {error}"
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def pose_qa(npz_uris: list[str], videos_uri: str, config: PoseConfig | None = None) -> list[dict]:
    """QA rows for release clips, one by one (see `qa_clip`)."""
    rows = []
    for uri in npz_uris:
        rows.append(qa_clip(uri, videos_uri, config))
        log.info("pose QA %s", json.dumps(rows[-1]))
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of QA rows (cm, %, degrees)."""
    head = (
        f"{'clip':32} {'T':>4} {'ATE SE3 cm':>10} {'ATE Sim3 cm':>11} {'scale %':>8} {'rot deg':>8}"
    )
    lines = [head]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['clip_id']:32} {r['frames']:>4} failed: {r['error'][:200]}")
            continue
        lines.append(
            f"{r['clip_id']:32} {r['frames']:>4} {100 * r['ate_se3_m']:>10.2f} "
            f"{100 * r['ate_sim3_m']:>11.2f} {100 * r['scale_error']:>8.2f} "
            f"{r['rotation_error_deg']:>8.3f}"
        )
    return "\n".join(lines)
