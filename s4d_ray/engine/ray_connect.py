"""How a run finds its Ray cluster: `RAY_ADDRESS`, a live local cluster, or a fresh one."""

from __future__ import annotations

import os
import socket


def local_cluster_address() -> str | None:
    """The GCS address of a live local Ray cluster (`ray start` on this machine), or None.

    Ray records the last `ray start` in `<RAY_TMPDIR or /tmp>/ray/ray_current_cluster`; a
    cluster that was killed leaves the file behind, so the address counts only if something
    accepts a TCP connection there within a second.
    """
    import ray._private.utils as ray_utils

    address = ray_utils.read_ray_address()
    if not address or ":" not in address:
        return None
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except (OSError, ValueError):
        return None
    return address


def connect_ray() -> str:
    """Initialise Ray for a run and say how: `RAY_ADDRESS` if set; else the live local
    cluster if one answers; else a fresh local cluster (a stale `ray_current_cluster` file
    is ignored). Returns a line for the log."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return f"connected to RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
    address = local_cluster_address()
    if address:
        ray.init(address=address)
        return f"connected to the running local cluster at {address}"
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 4))
    return "started a fresh local cluster (no live one found)"


def ensure_ray() -> str | None:
    """Connect (`connect_ray`) unless Ray is initialised already; the log line, or None."""
    import ray

    return None if ray.is_initialized() else connect_ray()
