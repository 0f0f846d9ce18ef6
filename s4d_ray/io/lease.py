"""One run per output folder: a lease object `OUTPUT/.s4d-lease.json`, created if-not-exists.

Two runs writing into one output with overlapping inputs would each write the same clip (in
shards of different names: two Parquet rows for one clip). So a run first creates the lease
object with exclusive-create semantics — `os.link` of a complete temp file locally (the name
appears whole or not at all), an `ifGenerationMatch=0` upload on GCS, `mode="create"` on
fsspec stores that support it — renews it every `heartbeat_s` while it runs, and deletes it
when done. A second run finds the lease and stops with `OutputBusyError` naming the holder.

A run killed without cleaning up (SIGKILL, a lost node) leaves its lease behind. It is taken
over when it is stale: not renewed for `stale_after_s`, or held by a process on this host
that no longer exists (checked at once, so a resubmitted job on the same head node needs no
wait). No listing of inputs or outputs ever returns the lease (`fs.is_internal`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from s4d_ray.errors import InputError
from s4d_ray.io import fs

log = logging.getLogger("s4d_ray.io.lease")

LEASE_NAME = ".s4d-lease.json"
STALE_AFTER_S = 120.0
HEARTBEAT_S = 15.0


class OutputBusyError(InputError):
    """Another live run holds the output folder's lease."""


def _proc_stat(pid: int) -> list[str]:
    """Fields 3.. of /proc/<pid>/stat (state first), [] if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _process_start(pid: int) -> str:
    """Start time of a local process (clock ticks since boot), '' if unknown: tells a live
    process from a later one that reused its pid."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else ""


def _holder_is_dead(holder: dict[str, Any]) -> bool:
    """Whether the lease's holder is a process of this host that has ended."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = int(holder.get("pid", 0) or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return True
    started = holder.get("pid_start", "")
    return bool(started) and _process_start(pid) not in ("", started)


def _create_exclusive(uri: str, data: bytes) -> None:
    """Write `uri` only if it does not exist (FileExistsError otherwise), all or nothing."""
    filesystem, path = fs.filesystem(uri)
    if fs.is_local(uri):
        folder = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(folder, fs.temp_name(path))
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails with FileExistsError if the lease exists
        finally:
            os.unlink(tmp)
        return
    if filesystem.exists(path):  # stores without preconditions (the GCS emulator) stop here
        raise FileExistsError(uri)
    try:
        filesystem.pipe_file(path, data, mode="create")  # GCS: ifGenerationMatch=0
    except FileExistsError:
        raise
    except Exception as error:  # a store's "precondition failed" for an existing object
        if filesystem.exists(path):
            raise FileExistsError(uri) from error
        raise


def _read(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.read_bytes(uri))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # unreadable: treated as held by an unknown run until stale by age


@dataclass
class OutputLease:
    """The lease on one output folder, held from `acquire` to `release` (a context manager)."""

    output: str
    stale_after_s: float = STALE_AFTER_S
    heartbeat_s: float = HEARTBEAT_S
    token: str = field(default_factory=lambda: os.urandom(8).hex())
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return fs.join(self.output, LEASE_NAME)

    def _content(self) -> bytes:
        pid = os.getpid()
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": pid,
                "pid_start": _process_start(pid),
                "renewed": time.time(),
                "stale_after_s": self.stale_after_s,
            }
        ).encode()

    @classmethod
    def acquire(
        cls, output: str, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S
    ) -> OutputLease:
        """Take the output's lease, or raise OutputBusyError naming the live run holding it."""
        lease = cls(output, stale_after_s, heartbeat_s)
        for _ in range(3):
            try:
                _create_exclusive(lease.uri, lease._content())
            except FileExistsError:
                holder = _read(lease.uri)
                if holder is None:
                    continue  # released meanwhile: try again
                age = time.time() - float(holder.get("renewed", 0) or 0)
                if _holder_is_dead(holder) or age > float(
                    holder.get("stale_after_s", stale_after_s)
                ):
                    log.warning("taking over the stale lease %s: %s", lease.uri, holder)
                    lease._remove_if(holder.get("token"))
                    continue
                raise OutputBusyError(
                    f"output {output!r} is in use by another run (host "
                    f"{holder.get('host')!r}, pid {holder.get('pid')}, lease renewed "
                    f"{age:.0f} s ago): two runs into one output could write a clip twice. "
                    f"Wait for it to end; a run that died leaves {lease.uri} behind, taken over "
                    f"{holder.get('stale_after_s', stale_after_s):.0f} s after its last renewal"
                ) from None
            lease._start_heartbeat()
            return lease
        raise OutputBusyError(f"could not take the lease {lease.uri}: other runs keep taking it")

    def _remove_if(self, token: str | None) -> None:
        """Delete the lease object if it still carries `token` (narrow race: good enough for
        stale leases, which nobody renews)."""
        current = _read(self.uri)
        if current is not None and current.get("token") == token:
            filesystem, path = fs.filesystem(self.uri)
            with contextlib.suppress(FileNotFoundError):
                filesystem.rm(path)

    def _start_heartbeat(self) -> None:
        def renew() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    current = _read(self.uri)
                    if current is None or current.get("token") != self.token:
                        log.error("lost the output lease %s to %s", self.uri, current)
                        return
                    fs.write_bytes(self.uri, self._content())
                except Exception:  # keep running; the next renewal may succeed
                    log.exception("could not renew the output lease %s", self.uri)

        self._thread = threading.Thread(target=renew, name="s4d-output-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and delete the lease (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._remove_if(self.token)

    def __enter__(self) -> OutputLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
