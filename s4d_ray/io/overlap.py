"""The one input/output overlap guard: a command never writes into, over or around its inputs.

Every command that writes beside what it reads (run, export-pointmaps, tracksto4d, predict,
rectify, and the `--out` files of view, the evaluators and poses) calls `check_output` before
it writes anything: an output that is, contains or lies inside an input (a folder, a file or a
glob's folder; local symlinks resolved) is refused naming both, so `s4d tracksto4d --npz
OUT/npz --output OUT` cannot replace the clips it reads with its predictions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import fsspec

from s4d_ray.errors import InputError
from s4d_ray.io import fs


class OutputPathError(InputError):
    """An output folder that overlaps an input or cannot be written."""


def _location(uri: str) -> tuple[str, str]:
    """(protocol, normalised absolute path) of a folder, file or glob; for a glob, the folder
    its first wildcard lies in. Local paths are resolved through symlinks."""
    protocol = fsspec.utils.get_protocol(uri)
    if fs.is_local(uri):
        path = uri.removeprefix("file://")
    else:
        _, path = fs.filesystem(uri)
    wild = min((path.index(ch) for ch in "*?[" if ch in path), default=-1)
    if wild >= 0:
        path = path[:wild].rsplit("/", 1)[0] or "/"
    if fs.is_local(uri):
        return "file", os.path.realpath(os.path.abspath(path))
    return ("gs" if protocol == "gcs" else protocol), "/" + path.strip("/")


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def check_output(output: str, inputs: Mapping[str, str], output_flag: str = "--output") -> None:
    """Refuse an output (folder or file) that equals, contains or lies inside an input
    (`inputs`: flag name -> URI; empty URIs are skipped). Raise OutputPathError naming both."""
    if not output:
        return
    out_protocol, out_path = _location(output)
    for flag, uri in inputs.items():
        if not uri:
            continue
        protocol, path = _location(uri)
        if protocol == out_protocol and _overlap(out_path, path):
            raise OutputPathError(
                f"{output_flag} {output!r} overlaps {flag} {uri!r} (resolved: {out_path} and "
                f"{path}): outputs would overwrite or be read as inputs; choose a separate "
                "output location"
            )


def check_output_folder(uri: str, flag: str) -> None:
    """Refuse an output folder that exists as something else (a file, a FIFO) before any
    work: otherwise the command fails at its first write, after the work, with an errno."""
    if fs.is_local(uri):
        path = fs.filesystem(uri)[1]
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{flag} {uri!r} exists and is not a folder")
