"""`benchmarks/gpu_check.sh`, the one prepared run for a lent GPU machine, and the `gpu` marker.

The dry run is exercised here as the lent machine would run it (no ray, PyAV or gcsfs: a
sitecustomize blocks their import), on the CPU. The `gpu` test runs where CUDA works and is
skipped elsewhere, with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
LENT_MACHINE_LACKS = ("ray", "av", "gcsfs")


def block_imports(folder: Path, modules: tuple[str, ...]) -> dict[str, str]:
    """An environment whose Pythons cannot import `modules` (a sitecustomize in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ", ".join(repr(m) for m in modules)
    (folder / "sitecustomize.py").write_text(
        f"import sys\n\nfor _name in ({names},):\n    sys.modules[_name] = None\n"
    )
    return os.environ | {"PYTHONPATH": str(folder), "PYTHON": sys.executable}


def test_gpu_check_dry_run_as_on_the_lent_machine(tmp_path):
    """The plan names the GPU commands and sizes; each step runs at its smallest size on the
    CPU; the table holds every model row in both precisions, the optimiser rows on JAX, and
    the pipeline as skipped for want of ray."""
    env = block_imports(tmp_path / "block", LENT_MACHINE_LACKS)
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--models", "sea_raft,tracksto4d"]
        + ["--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # the plan: what the GPU run would measure
    assert "bench_gpu --skip-pipeline --precisions fp32,bf16 --models sea_raft,tracksto4d" in log
    assert "64 pairs 512² at half res, spring-M" in log
    assert "2048 tracks x 50 frames" in log
    assert "--tracks 4000 --frames 128 --full-tracks 25000 --full-frames 200" in log
    assert "ray runner: 4 synthetic clips x 24 frames" in log
    # the table, printed last and kept in --out
    table = (out / "table.txt").read_text()
    assert result.stdout.rstrip().endswith(table.rstrip())
    lines = table.splitlines()
    assert lines[0].startswith("gpu_check on CPU only")
    assert "ray not importable" in lines[2] and "av not importable" in lines[2]
    blank = lines.index("")  # the result rows above, the steps below
    rows = [line.split() for line in lines[3:blank] if not line.startswith(("step", "---"))]
    models = {(row[1], row[2]) for row in rows if row[0] == "models"}
    assert models == {(m, p) for m in ("SEA-RAFT", "TracksTo4D") for p in ("fp32", "bf16")}
    for row in rows:
        if row[0] == "models":
            assert float(row[3]) > 0, row
    optimize = [" ".join(row) for row in rows if row[0] == "optimize"]
    assert len(optimize) == 4, optimize  # ours, reference, speed-up, ours on the full clip
    assert sum("JAX cpu" in row for row in optimize) == 3
    pipeline = [" ".join(row) for row in rows if row[0] == "pipeline"]
    assert pipeline == [
        "pipeline - skipped: ray or av not importable: "
        "ModuleNotFoundError: import of ray halted; None in sys.modules"
    ]
    steps = [line.split()[:2] for line in lines[blank + 2 :]]
    assert steps == [
        ["env", "ok"],
        ["models", "ok"],
        ["models-bf16", "ok"],
        ["optimize", "ok"],
        ["pipeline", "skipped"],
    ]
    facts = json.loads((out / "env.json").read_text())
    assert facts["cuda_available"] is False and facts["jax_backend"] == "cpu"


def test_gpu_check_table_names_a_step_that_ran_out_of_time(tmp_path):
    """Rows measured before a time limit stay, with the step's status beside them."""
    from benchmarks.gpu_check import table

    row = {
        "kind": "model",
        "name": "BootsTAP",
        "precision": "fp32",
        "unit": "query·frames/s",
        "rate": 1234.5,
        "seconds_per_call": 0.5,
        "peak_mib": 2048.0,
        "note": "4096 queries x 32 frames at 512²",
    }
    (tmp_path / "models.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "steps.tsv").write_text(
        "env\tok\t3\tpython3 -m benchmarks.gpu_check env\n"
        "models\ttimeout\t300\tpython3 -m benchmarks.bench_gpu\n"
        "optimize\tfailed (exit 1)\t12\tpython3 -m benchmarks.bench_optimize\n"
        "pipeline\tskipped\t0\tray or av not importable\n"
    )
    text = table(tmp_path)
    assert "BootsTAP" in text and "1234.5" in text
    assert "step timeout: rows above only" in text
    assert "no results (failed (exit 1))" in text
    assert "skipped: ray or av not importable" in text


def test_gpu_marked_tests_are_skipped_with_the_reason_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA works here: the gpu tests run")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs"]
        + [f"{Path(__file__).relative_to(REPO)}::test_sea_raft_on_cuda_matches_the_cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 skipped" in result.stdout
    assert "needs CUDA: torch.cuda.is_available() is False (torch " in result.stdout


@pytest.mark.gpu
def test_sea_raft_on_cuda_matches_the_cpu(tmp_path):
    """One tiny clip through the neural stereo matcher, as bench_gpu runs it (random weights
    in the official safetensors format, the tiny SEA-RAFT config): fp32 on CUDA gives the
    CPU's flows within float tolerance (TF32 off); bf16 on CUDA stays within 10 % of the
    largest flow (0.4 % for bf16 on the CPU)."""
    import torch

    from benchmarks.bench_gpu import TINY_SHAPES, write_checkpoints
    from s4d_ray.stages.stereo import StereoMatcher

    options = write_checkpoints(tmp_path, TINY_SHAPES, ("stereo",))["stereo"]
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (2, 64, 64, 3), np.uint8)
    right = np.roll(left, -4, axis=2)

    def flows(device: str, precision: str) -> tuple[np.ndarray, np.ndarray]:
        matcher = StereoMatcher("neural", **options, device=device, precision=precision)
        return matcher(left, right)

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    tf32 = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        on_cpu = flows("cpu", "fp32")
        on_gpu = flows("cuda", "fp32")
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = tf32
    for cpu, gpu, bf16 in zip(on_cpu, on_gpu, flows("cuda", "bf16"), strict=True):
        assert gpu.shape == cpu.shape == bf16.shape == (2, 64, 64, 2)
        scale = max(1.0, float(np.nanmax(np.abs(cpu))))
        np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-3 * scale)
        assert np.isfinite(bf16).all()
        np.testing.assert_allclose(bf16, cpu, rtol=0, atol=0.1 * scale)
