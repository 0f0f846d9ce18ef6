"""Own videos as the engine's clip source (`engine.pipeline.ClipSource`): one Ray Data read
task per video.

Each read task makes one decode pass over its video (`ownvideo.prepare.prepared_clips`:
probe, calibration from keyframes, cuts, the wide posing view and the release's 512² view of
every kept frame) and yields each clip as one block as soon as it is posed, in the decode
stage's output schema: the source takes the decode stage's place in the graph
(`engine.pipeline.build_dataset`). Tracking of a video's first clip starts while its later clips are
still being cut, and the clips of one long video spread over every node's actor pools.

Resume: clips complete under the output when the run started are skipped where they are cut;
clips posed by an earlier run keep their poses. A video whose outcome file lists every clip
as complete (or failed) gets no read task at all. A read task yields the same blocks in the
same order however often it runs (Ray replays a lost streaming task and refuses one whose
replay differs: `StreamingGeneratorReplayInconsistentError`), so what is skipped is decided
by the driver's listing alone, not by what was written since.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from s4d_ray.engine.clip_stages import RECORD_COLUMNS, set_decoded
from s4d_ray.engine.config import PipelineConfig, StageResources
from s4d_ray.engine.metrics import record_video_progress
from s4d_ray.engine.pipeline import SourcePlan
from s4d_ray.engine.rows import Row, Stage, clip_spec, pass_failed, update_json
from s4d_ray.engine.stage_list import STAGE, TASK, Job, StageSpec
from s4d_ray.geometry.camera import RELEASE_CAMERA
from s4d_ray.geometry.stereo_format import StereoFormat
from s4d_ray.io import fs
from s4d_ray.io.clip_io import npz_stem
from s4d_ray.io.video import decode_threads
from s4d_ray.io.video_lookup import VIDEO_FORMAT_EXTRA, VIDEO_SUFFIXES
from s4d_ray.io.writer import ClipFailure
from s4d_ray.ownvideo.prepare import (
    POSE_EXTRAS,
    OwnVideoConfig,
    PreparedClip,
    PreparedFailure,
    VideoOutcome,
    list_videos,
    outcome_uri,
    pose_clip,
    prepared_clips,
    prepared_npz_folder,
    stored_outcome,
    unposed_record,
)

log = logging.getLogger("s4d_ray.ownvideo.source")


def plan_videos(
    videos: str, output: str, completed: set[str]
) -> tuple[list[tuple[str, str]], list[ClipFailure]]:
    """The videos under `videos` that need a read task (video id, URI), and the failures known
    before any is read: duplicate ids, and the stored failures of videos an earlier run
    finished (their outcome, this version, names only clips in `completed`: not read again)."""
    listed, duplicates = list_videos(videos)
    if not listed and not duplicates:
        raise FileNotFoundError(
            f"no video ({', '.join(VIDEO_SUFFIXES)}) under {videos!r} "
            "(own-video mode: --videos without --npz)"
        )
    failures = [as_clip_failure(f) for f in duplicates]
    todo = []
    for video_id, uri in listed:
        outcome = stored_outcome(output, video_id)
        if outcome is not None and all(npz_stem(u) in completed for u in outcome.npz_uris):
            failures += [as_clip_failure(f) for f in outcome.failures]
        else:
            todo.append((video_id, uri))
    log.info("%d own videos to read, %d finished earlier", len(todo), len(listed) - len(todo))
    return todo, failures


def as_clip_failure(failure: PreparedFailure) -> ClipFailure:
    return ClipFailure(failure.clip_id, failure.stage, failure.error_type, failure.message)


def clip_row(clip: PreparedClip, videos: str, output: str, dense: bool) -> Row:
    """The decode stage's output row of an unposed own-video clip (its frames made by the
    pass; placeholder cameras) plus its wide grey views for the `poses` stage (`POSE_VIEWS`)
    and, in its metadata, its calibration's median vertical disparity."""
    record = clip.record
    fmt = StereoFormat.from_json(str(record.extras[VIDEO_FORMAT_EXTRA]))
    npz_uri = fs.join(prepared_npz_folder(output), f"{record.name}.npz")
    row = clip_spec(record.name, npz_uri, videos_root=videos)
    camera = RELEASE_CAMERA.with_baseline(fmt.baseline_m)
    assert clip.left is not None and clip.right is not None  # made with a camera
    set_decoded(row, record, camera, fmt, clip.left, clip.right, dense)
    row.update(pose_left=clip.pose_left, pose_right=clip.pose_right)
    update_json(row, "timings", clip.seconds)
    vertical = float(record.extras["calibration_vertical_px"])
    update_json(
        row, "metadata", {"video_format": fmt.to_json_dict(), "calibration_vertical_px": vertical}
    )
    return row


POSE_VIEWS = {"pose_left": ("uint8", 3), "pose_right": ("uint8", 3)}
"""Columns the source adds besides the decode stage's: each clip's wide grey views [T,P,P]."""


def pose_row(row: Row, job: Job, own: OwnVideoConfig) -> Row:
    """The `poses` stage: the clip's trajectory from its wide grey views (`prepare.pose_clip`:
    poses an earlier run wrote for the same frames and rig are reused), its prepared npz
    written, `camera2world` [T,3,4] set; the pose figures in its metadata."""
    template = unposed_record(
        str(row["clip_id"]),
        str(row["video_id"]),
        row["timestamps"],
        row["rectified2rig"],
        row["fov_bounds"],
        str(row["video_format"]),
        json.loads(row["metadata"])["calibration_vertical_px"],
    )
    record, reused = pose_clip(template, row["pose_left"], row["pose_right"], own, job.output)
    row["camera2world"] = record.camera2world.astype(np.float32)
    del row["pose_left"], row["pose_right"]
    poses = {k: record.extras[k].item() for k in POSE_EXTRAS if k in record.extras}
    update_json(row, "metadata", {"poses": {**poses, "reused": reused}})
    record_video_progress(record.video_id, "posed", 1)
    return row


def pose_stage(own: OwnVideoConfig) -> StageSpec:
    """The stage own-video clips are posed in, right after their source: a Ray task per
    clip, so the clips of one long video are posed on every node while its pass goes on."""
    return StageSpec(
        "poses",
        reads=(
            "video_id",
            "timestamps",
            "rectified2rig",
            "fov_bounds",
            "video_format",
            *POSE_VIEWS,
        ),
        adds={"camera2world": RECORD_COLUMNS["camera2world"]},
        drops=tuple(POSE_VIEWS),
        kind=TASK,
        process=partial(pose_row, own=own),
    )


def failure_row(failure: PreparedFailure, videos: str) -> Row:
    """A failure row (with the decode stage's placeholders) of a video or clip the pass
    could not prepare; `clip_id` is the video id for a whole video."""
    row = clip_spec("placeholder_0", "", videos_root=videos)
    row.update(
        clip_id=failure.clip_id,
        error_stage=failure.stage,
        error_type=failure.error_type,
        error_message=failure.message,
    )
    pass_failed(row, STAGE["decode"])
    return pass_failed(row, Stage("source", adds=POSE_VIEWS))


def _block(row: Row) -> Any:
    from ray.data._internal.delegating_block_builder import DelegatingBlockBuilder

    builder = DelegatingBlockBuilder()
    builder.add(row)
    return builder.build()


class OwnVideoSource:
    """Every video under `videos_root` as clips (`engine.pipeline.ClipSource`): a Ray Data
    datasource of one read task per video, one block per clip (`clip_row`) or failure
    (`failure_row`)."""

    def __init__(
        self, videos_root: str, output: str, own: OwnVideoConfig, config: PipelineConfig
    ) -> None:
        self.videos_root = videos_root
        self.output = output
        self.own = own
        self.dense = config.dense
        self.completed: frozenset[str] = frozenset()

    def plan(self, completed: set[str]) -> SourcePlan:
        """The read of the videos not finished with the clips in `completed`."""
        todo, failures = plan_videos(self.videos_root, self.output, completed)
        self.completed = frozenset(completed)
        datasource = self._datasource(todo) if todo else None
        stages = ((pose_stage(self.own), StageResources(num_cpus=self.own.pose_cpus)),)
        return SourcePlan(datasource, len(todo), self.own.task_cpus, failures, stages)

    def _datasource(self, videos: list[tuple[str, str]]) -> Any:
        from ray.data.block import BlockMetadata
        from ray.data.datasource import Datasource, ReadTask

        source = self

        class _Source(Datasource):
            def get_name(self) -> str:
                return "OwnVideos"

            def estimate_inmemory_data_size(self) -> None:
                return None

            def get_read_tasks(
                self,
                parallelism: int,
                per_task_row_limit: int | None = None,
                data_context: Any = None,
            ) -> list[ReadTask]:
                return [
                    ReadTask(
                        partial(source.read, video_id, uri),
                        BlockMetadata(
                            num_rows=None, size_bytes=None, input_files=(uri,), exec_stats=None
                        ),
                        per_task_row_limit=per_task_row_limit,
                    )
                    for video_id, uri in videos
                ]

        return _Source()

    def read(self, video_id: str, uri: str) -> Iterator[Any]:
        """One video's blocks; its outcome file written at the end (figures of the pass)."""
        outcome = VideoOutcome(video_id=video_id)
        folder = prepared_npz_folder(self.output)
        with decode_threads(math.floor(self.own.task_cpus)):
            items = prepared_clips(
                uri,
                video_id,
                self.output,
                self.own,
                outcome.figures,
                camera=RELEASE_CAMERA,
                done=self.completed.__contains__,
                report=record_video_progress,
                pose=False,
            )
            for item in items:
                if isinstance(item, PreparedFailure):
                    outcome.failures.append(item)
                    log.error("own video %s: %s in %s", item.clip_id, item.message, item.stage)
                    yield _block(failure_row(item, self.videos_root))
                    continue
                name = item if isinstance(item, str) else item.record.name
                outcome.npz_uris.append(fs.join(folder, f"{name}.npz"))
                if isinstance(item, PreparedClip):
                    yield _block(clip_row(item, self.videos_root, self.output, self.dense))
        fs.write_bytes(outcome_uri(self.output, video_id), outcome.to_json().encode())
        log.info(
            "own video %s: %d clips, %d failures, %s",
            video_id,
            len(outcome.npz_uris),
            len(outcome.failures),
            outcome.figures.get("decodes"),
        )
