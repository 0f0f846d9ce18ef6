"""Errors that name the clip and the pipeline stage, so a failure record says what broke where.

Every exception class of s4d-ray derives from `S4DError`; `exit_code` maps them to a
command's exit status in one place."""

from __future__ import annotations


class S4DError(Exception):
    """The base of every s4d-ray error: `except S4DError` catches what this library raises on
    purpose, and lets bugs (and errors of the libraries underneath) through."""


class StageError(S4DError, RuntimeError):
    """A clip failed in one stage; the job records it and goes on with the other clips."""

    def __init__(self, clip_id: str, stage: str, message: str):
        self.clip_id = clip_id
        self.stage = stage
        self.message = message
        super().__init__(f"clip {clip_id!r}, stage {stage!r}: {message}")


class VideoError(StageError):
    """A video that cannot be opened, decoded, or does not hold the frames a clip asks for."""


class InputError(S4DError, ValueError):
    """A file, folder or value handed to a command that cannot be used; the message names it.

    Commands map it (and StageError, OSError) to one line on stderr and exit status 2
    (`exit_code`); the bad-input classes of the library derive from it."""


class ResourceLimitError(InputError):
    """An input whose declared size (from its headers, before anything is allocated) is over
    the limit set for it; the message names the file, the size and the setting that raises it."""


class JobAbortedError(S4DError, RuntimeError):
    """A job stopped on purpose before its end (too many of its clips failed): exit 3."""


def exit_code(error: BaseException) -> int | None:
    """The one map from an error to a command's exit status, used by `s4d` and every job:
    3 for an aborted job; 2 for bad input or a file that cannot be read or written (the
    message names it); None for anything else (a bug: the traceback is kept)."""
    if isinstance(error, JobAbortedError):
        return 3
    if isinstance(error, StageError | InputError | OSError):
        return 2
    return None


def report_error(error: Exception, prefix: str) -> int:
    """For a command's top level: print `<prefix>: error: <message>` (`aborted:` for exit 3)
    as one line on stderr and return the exit code; re-raise a bug with its traceback."""
    import sys

    code = exit_code(error)
    if code is None:
        raise error
    print(f"{prefix}: {'aborted' if code == 3 else 'error'}: {error}", file=sys.stderr)
    return code
