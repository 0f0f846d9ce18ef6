"""JAX's persistent compilation cache under the s4d cache folder, shared by processes.

The track optimiser and the motion kernel compile one XLA program per frame bucket; without
a persistent cache every Ray worker process pays that again (seconds per bucket on CPU).
`enable_compilation_cache()` points JAX at `jax_compilation/` in the s4d cache folder
(`$S4D_CACHE_DIR`, else `~/.cache/s4d_ray/weights`), unless the user already configured a cache
(`JAX_COMPILATION_CACHE_DIR` or `jax.config`), or `S4D_JAX_CACHE=0` turns it off. Entries are
keyed by JAX on the program, the backend and the versions, so a stale entry is never used.
"""

from __future__ import annotations

import os
from pathlib import Path

_ENABLED: str | None = None


def compilation_cache_dir() -> Path:
    """Where compiled XLA programs are cached: `jax_compilation/` in the s4d cache folder."""
    from s4d_ray.io.fs import cache_dir

    return cache_dir() / "jax_compilation"


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache (idempotent); returns its folder or None.

    Every compiled program is stored (no minimum compile time), so a new process loads
    instead of compiling. Call before the first jitted call of a process for full effect.
    """
    global _ENABLED
    if _ENABLED is not None:
        return _ENABLED or None
    import jax

    if os.environ.get("S4D_JAX_CACHE", "1") == "0":
        _ENABLED = ""
        return None
    configured = jax.config.values["jax_compilation_cache_dir"]
    if configured:
        _ENABLED = str(configured)
        return _ENABLED
    folder = compilation_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        _ENABLED = ""  # read-only home: run without a persistent cache
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _ENABLED = str(folder)
    return _ENABLED
