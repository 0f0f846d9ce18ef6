"""Errors that name the clip and the pipeline stage, so a failure record says what broke where."""

from __future__ import annotations


class StageError(RuntimeError):
    """A clip failed in one stage; the job records it and goes on with the other clips."""

    def __init__(self, clip_id: str, stage: str, message: str):
        self.clip_id = clip_id
        self.stage = stage
        self.message = message
        super().__init__(f"clip {clip_id!r}, stage {stage!r}: {message}")


class VideoError(StageError):
    """A video that cannot be opened, decoded, or does not hold the frames a clip asks for."""
