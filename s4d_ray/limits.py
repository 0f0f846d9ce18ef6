"""Caps on what an input may declare, each raisable by an environment variable.

Every format keeps its own default caps as named constants beside its reader (`io.dense`,
`pointmaps.reader`, `models.weights`, `models.deeplab`, `models.tracksto4d`); this module only
reads the override, at call time, so one helper parses every variable alike.
"""

from __future__ import annotations

import os

from s4d_ray.errors import InputError


def env_limit(name: str, default: int) -> int:
    """`$name` as a positive integer when set (a cap raised without code), else `default`.

    A value that is not a positive integer is an InputError naming the variable, never a
    silent fallback to the default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"environment variable {name}={raw!r}: expected a positive integer")
    return value
