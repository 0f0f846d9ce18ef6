"""The command line's building blocks: argparse value types with ranges (a bad value is a
one-line usage error, exit 2, naming the flag, never a traceback from deep inside a job) and
`Command`, what each capability's `command.py` declares per subcommand."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One `s4d` subcommand (and, for a job, its `jobs/*.py` script): its flags and its run.

    `add_arguments(parser)` declares the flags; `run(args) -> exit status` does the work and
    raises on failure (`s4d_ray.cli` maps every error to its exit status in one place)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def int_range(
    low: int | None = None, high: int | None = None, multiple_of: int = 1
) -> Callable[[str], int]:
    """An integer in [low, high] (either bound may be None: open), a multiple of `multiple_of`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be in {_span(low, high)}, got {value}")
        if value % multiple_of:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple_of}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """A finite float in [low, high] (`low_open`/`high_open`: exclude the bound); NaN and
    infinities are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            raise argparse.ArgumentTypeError(
                f"must be in {left}{_bound(low, '-inf')}, {_bound(high, 'inf')}{right}, got {value:g}"
            )
        return value

    parse.__name__ = "number"
    return parse


def _bound(value: float | None, open_text: str) -> str:
    return open_text if value is None else f"{value:g}"


def _span(low: int | None, high: int | None) -> str:
    return f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"


DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"


def device_name(text: str) -> str:
    """A torch device name of the form auto, cpu, cuda, cuda:N or mps; whether that device
    exists here is checked when it is used (`s4d_ray.models.device.pick_device`)."""
    kind, _, index = text.partition(":")
    if kind in ("auto", "cpu", "mps") and not index and ":" not in text:
        return text
    if kind == "cuda" and (":" not in text or (index.isascii() and index.isdigit())):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {DEVICE_FORMS}, got {text!r}")
