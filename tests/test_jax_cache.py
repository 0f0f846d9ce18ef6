"""JAX's persistent compilation cache lives in the s4d cache folder and is shared by processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """
import numpy as np
from s4d_ray.track.jax_cache import enable_compilation_cache
from s4d_ray.geometry.camera import RELEASE_CAMERA
from s4d_ray.track.lift import motion_displacement
points = np.random.default_rng(0).normal(0, 1, (3, 6, 3)) + [0, 0, 4]
motion_displacement(points, np.ones((3, 6), bool), np.tile(np.eye(3, 4), (6, 1, 1)), RELEASE_CAMERA)
print(enable_compilation_cache())
"""


def _run(env: dict) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_compiled_programs_are_cached_across_processes(tmp_path):
    env = {**os.environ, "S4D_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    folder = Path(_run(env))
    assert folder == tmp_path / "cache" / "jax_compilation"
    entries = sorted(p.name for p in folder.iterdir())
    assert entries  # the motion kernel was stored
    assert _run(env) == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == entries  # found, not compiled again
    assert _run({**env, "S4D_JAX_CACHE": "0"}) == "None"
