"""The Python half of `benchmarks/gpu_check.sh`: the environment facts and the one table.

    python -m benchmarks.gpu_check env --json FILE   # python, torch, CUDA, driver, GPU, JAX, ...
    python -m benchmarks.gpu_check table DIR         # the table of one gpu_check.sh run

Only the standard library at module level: torch, JAX and the rest are imported inside `env`,
each optional (a fact then reads `not importable: ...`), so the check runs on a machine that
lacks any of them. `table` reads what the steps wrote into DIR: `env.json`, `steps.tsv` (one
line per step: name, status, seconds, command or reason), and the JSON lines of
`models.jsonl` and `pipeline.jsonl` (`bench_gpu --json-out`) and `optimize.jsonl`
(`bench_optimize --json-out`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def _version(module: str) -> str:
    """`module.__version__`, or why it cannot be imported."""
    try:
        imported = importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - any import failure is the fact
        return f"not importable: {type(error).__name__}: {str(error)[:80]}"
    return str(getattr(imported, "__version__", "installed"))


def driver_version() -> str:
    """The NVIDIA driver version from /proc, else from nvidia-smi, else 'none found'."""
    from s4d_ray.models.device import nvidia_driver_version

    found = nvidia_driver_version()
    if found:
        return found
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "none found"
    lines = result.stdout.strip().splitlines()
    return lines[0] if lines else "none found"


def torch_facts() -> dict[str, Any]:
    """torch's version, its CUDA build and what it sees of the GPU."""
    try:
        import torch
    except Exception as error:  # noqa: BLE001
        return {"torch": f"not importable: {type(error).__name__}: {str(error)[:80]}"}
    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "none",
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": bool(torch.cuda.is_available()),
    }
    if facts["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        facts["device_count"] = torch.cuda.device_count()
        facts["device"] = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"{props.multi_processor_count} SMs, sm_{props.major}{props.minor}"
        )
    else:
        facts["device"] = f"CPU only ({os.cpu_count()} CPUs)"
    return facts


def jax_facts() -> dict[str, Any]:
    """JAX's version, default backend and devices (without grabbing most of the GPU)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax

        return {
            "jax": jax.__version__,
            "jax_backend": jax.default_backend(),
            "jax_devices": ", ".join(str(device) for device in jax.devices()),
        }
    except Exception as error:  # noqa: BLE001
        return {"jax": f"not usable: {type(error).__name__}: {str(error)[:80]}"}


def env_facts() -> dict[str, Any]:
    """Everything the table's header reports about the machine and its Python."""
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "driver": driver_version(),
    }
    facts |= torch_facts()
    facts |= jax_facts()
    for module in ("numpy", "cv2", "ray", "av", "gcsfs"):
        facts[module] = _version(module)
    return facts


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (none when it is missing)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _number(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _row(
    step: str, item: str, prec: str, value: str, unit: str, per: str, peak: str, note: str
) -> str:
    return f"{step:<9} {item:<22} {prec:<5} {value:>10} {unit:<16} {per:>8} {peak:>9}  {note}"


HEADER = _row("step", "item", "prec", "value", "unit", "s/call", "peak MiB", "notes")


def model_rows(records: list[dict[str, Any]]) -> list[str]:
    """bench_gpu's model rows."""
    rows = []
    for r in records:
        if r.get("kind") != "model":
            continue
        rows.append(
            _row(
                "models",
                r["name"],
                r["precision"],
                _number(r["rate"]),
                r["unit"],
                _number(r["seconds_per_call"], 3),
                _number(r["peak_mib"], 0),
                r["note"],
            )
        )
    return rows


def optimize_rows(records: list[dict[str, Any]]) -> list[str]:
    """bench_optimize's runs (one per fresh process, JAX compilation included) and the
    reference comparison."""
    rows = []
    for r in records:
        size = f"{r['tracks']} x {r['frames']}"
        if r.get("kind") == "run":
            note = (
                f"JAX {r['backend']} ({', '.join(r['devices'])[:40]}); {r['cpu_s']:.1f} s cpu, "
                f"peak RSS {r['peak_rss_gib']:.2f} GiB; compile included"
            )
            rows.append(
                _row(
                    "optimize",
                    f"{r['implementation']} {size}",
                    "fp32",
                    _number(r["wall_s"], 2),
                    "s wall",
                    "",
                    "",
                    note,
                )
            )
        elif r.get("kind") == "comparison":
            note = (
                f"|ours - reference| max {r['max_diff_m']:.1e} m, median {r['median_diff_m']:.1e} m"
            )
            rows.append(
                _row(
                    "optimize",
                    f"speed-up {size}",
                    "",
                    _number(r["speedup_wall"]),
                    "x (ref / ours)",
                    "",
                    "",
                    note,
                )
            )
    return rows


def pipeline_rows(records: list[dict[str, Any]]) -> list[str]:
    """bench_gpu's pipeline run: clips per hour, then seconds per clip of each stage."""
    rows = []
    for r in records:
        if r.get("kind") != "pipeline":
            continue
        if "error" in r:
            rows.append(_row("pipeline", "", "", "", "", "", "", f"FAILED {r['error']}"))
            continue
        done, wall = r["clips_done"], r["wall"]
        rows.append(
            _row(
                "pipeline",
                f"{r['runner']}",
                r["precision"],
                _number(3600 * done / wall if wall else None),
                "clips/hour/GPU",
                _number(wall / max(done, 1), 1),
                "",
                f"{done} of {r['clips']} clips x {r['clip_frames']} frames in {wall:.1f} s "
                f"(failed {r['clips_failed']}: {r['failures_by_stage']})",
            )
        )
        for stage, seconds in r["stage_seconds_per_clip"].items():
            rows.append(
                _row("pipeline", f"  {stage}", "", _number(seconds, 2), "s per clip", "", "", "")
            )
    return rows


def read_steps(path: Path) -> list[tuple[str, str, str, str]]:
    """steps.tsv: (name, status, seconds, command or reason) per step, in the order run."""
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        name, status, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
        steps.append((name, status, seconds, detail))
    return steps


def _short(fact: Any) -> str:
    """A fact for the header: 'not importable' without the exception text."""
    text = str(fact)
    return text.split(":", 1)[0] if text.startswith("not ") else text


def header(env: dict[str, Any]) -> list[str]:
    """The environment facts above the table (`gpu_check env` prints them in full)."""
    get = env.get
    return [
        f"gpu_check on {get('device', '?')}; driver {get('driver', '?')}; {get('machine', '?')}",
        f"  python {get('python', '?')} ({get('executable', '?')}); torch {get('torch', '?')}, "
        f"CUDA build {get('torch_cuda', '?')}, cuDNN {get('cudnn', '?')}",
        f"  JAX {_short(get('jax', '?'))} on {get('jax_backend', '?')} "
        f"[{get('jax_devices', '?')}]; numpy {get('numpy', '?')}; ray {_short(get('ray', '?'))}; "
        f"av {_short(get('av', '?'))}",
    ]


def table(folder: Path) -> str:
    """The one table of a gpu_check.sh run in `folder`."""
    env_file = folder / "env.json"
    env = json.loads(env_file.read_text()) if env_file.exists() else {}
    steps = read_steps(folder / "steps.tsv")
    status: dict[str, tuple[str, str]] = {}
    for name, state, _, detail in steps:  # a section's state: its first step not ok, if any
        section = name.split("-")[0]
        if status.get(section, ("ok", ""))[0] == "ok":
            status[section] = (state, detail)
    sections = (
        ("models", model_rows(_read_lines(folder / "models.jsonl"))),
        ("optimize", optimize_rows(_read_lines(folder / "optimize.jsonl"))),
        ("pipeline", pipeline_rows(_read_lines(folder / "pipeline.jsonl"))),
    )
    lines = [*header(env), HEADER, "-" * len(HEADER)]
    for name, rows in sections:
        state, detail = status.get(name, ("not run", ""))
        if not rows:
            note = f"{state}: {detail}" if state == "skipped" else f"no results ({state})"
            rows = [_row(name, "-", "", "", "", "", "", note)]
        elif state not in ("ok", "not run"):
            rows.append(_row(name, "-", "", "", "", "", "", f"step {state}: rows above only"))
        lines += rows
    lines += ["", f"{'step':<12} {'status':<18} {'time':>7}  command or reason"]
    lines += [f"{n:<12} {s:<18} {sec:>5} s  {d}" for n, s, sec, d in steps]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="print the environment facts")
    env.add_argument("--json", help="also write them to this file")
    show = commands.add_parser("table", help="print the table of a gpu_check.sh run")
    show.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "env":
        facts = env_facts()
        for key, value in facts.items():
            print(f"{key:>15}: {value}")
        if args.json:
            Path(args.json).write_text(json.dumps(facts, indent=1))
        return 0
    print(table(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
