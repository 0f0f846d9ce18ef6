"""Training with two Ray Train workers (DDP over gloo, CPU): both trainers' steps average the
workers' gradients (two workers × batch b step like one worker × 2b), the samples are sharded
(no sample twice in a pass), rank 0 alone checkpoints, and a run resumes after a worker fails."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch

from s4d_ray import train_loop
from s4d_ray.dynadust3r import train as dynadust3r
from s4d_ray.dynadust3r.data import SampleConfig as PairConfig
from s4d_ray.dynadust3r.data import iter_samples
from s4d_ray.dynadust3r.evaluate import collate
from s4d_ray.dynadust3r.loss import LossConfig as PairLoss
from s4d_ray.tracksto4d import train as tracksto4d
from s4d_ray.tracksto4d.data import SampleConfig as TrackConfig
from s4d_ray.tracksto4d.data import samples_from_uris
from s4d_ray.tracksto4d.loss import LossConfig as TrackLoss

CPU = torch.device("cpu")
WORKERS, BATCH = 2, 2  # BATCH samples per worker and step
LR = 1e-3
TOLERANCE = 1e-4
"""Of the largest gradient (gradients) and of the largest update (parameters): float32 sums in
another order. Measured: gradients ≤ 3.0e-6, parameters ≤ 4.3e-6 (both trainers); with losses
pooled over the batch's points instead, the gradients differed by 4.7e-4 (DynaDUSt3R) and
0.15 (TracksTo4D)."""


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module, in a temp dir of its own: Ray Train's placement-group
    cleaner finds "its" cluster through the temp dir's `ray_current_cluster`, which a `ray
    start` elsewhere on the machine would otherwise own (it then took our controller for dead
    and removed our workers' placement group). The module's functions travel to the workers
    by value: Ray's workers cannot import a test module."""
    import ray
    import ray.cloudpickle

    module = sys.modules[__name__]
    temp_dir = tempfile.mkdtemp(prefix="s4d-mw-")
    ray.cloudpickle.register_pickle_by_value(module)
    with mock.patch.dict(os.environ, {"RAY_TMPDIR": temp_dir}):
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(module)
    shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class Trainer:
    """A trainer's real model and step, as its worker loop builds them."""

    model: Callable[[], torch.nn.Module]
    step: Callable[[torch.nn.Module, torch.optim.Optimizer, list[dict], int], dict]


def _pair_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, samples: list[dict], step: int
) -> dict:
    return dynadust3r.train_step(model, optimizer, collate(samples, CPU), PairLoss(), CPU)


def _track_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, samples: list[dict], step: int
) -> dict:
    """Step 0 takes the warm-up loss (it leaves the per-point head unused), step 1 the full one."""
    batch = tracksto4d.to_batch(samples, CPU)
    return tracksto4d.train_step(model, optimizer, batch, TrackLoss(), CPU, warmup=step == 0)


TRAINERS = {
    "dynadust3r": Trainer(
        model=lambda: dynadust3r.initial_model(None, seed=0),
        step=_pair_step,
    ),
    "tracksto4d": Trainer(
        model=lambda: tracksto4d.initial_model(None, seed=0),
        step=_track_step,
    ),
}


def _sgd(model: torch.nn.Module) -> torch.optim.SGD:
    """Plain SGD: the step is −LR × the gradient, so the parameters show the gradient's scale.
    (Adam's first step is LR × sign(gradient): blind to a wrong scale, and flipped by rounding
    where a gradient is below the float32 rounding of its sum.)"""
    return torch.optim.SGD(model.parameters(), lr=LR)


def _state(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
    }


def _steps_on_fixed_batches(config: dict[str, Any]) -> None:
    """Ray Train worker: per trainer, DDP steps on this rank's fixed batches; the parameters
    and the (averaged) gradients after each step go to `config['out']`."""
    import ray.train

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    for name, steps in config["batches"].items():
        trainer = TRAINERS[name]
        model = trainer.model()
        optimizer = _sgd(model)
        distributed = train_loop.distribute(model)
        for step, per_rank in enumerate(steps):
            trainer.step(distributed, optimizer, per_rank[rank], step)
            torch.save(_state(model), Path(config["out"]) / f"{name}-{step}-{rank}.pt")


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.fixture(scope="module")
def fixed_batches(synth_dir) -> dict[str, list[list[list[dict]]]]:
    """Per trainer: 2 steps × 2 ranks × BATCH samples of the synthetic clips."""
    pairs = list(
        iter_samples(
            str(synth_dir / "npz"),
            str(synth_dir / "raw"),
            config=PairConfig(image_size=32, pairs_per_clip=2, min_tracks=16),
        )
    )
    uris = [str(p) for p in sorted((synth_dir / "npz").glob("*.npz"))]
    tracks = samples_from_uris(
        uris, TrackConfig(frames=12, tracks=32, min_visible=6, samples_per_clip=2)
    )
    out = {}
    for name, samples in (("dynadust3r", pairs), ("tracksto4d", tracks)):
        assert len(samples) >= 2 * WORKERS * BATCH
        out[name] = [
            [samples[(2 * step + rank) * BATCH : (2 * step + rank + 1) * BATCH] for rank in (0, 1)]
            for step in range(2)
        ]
    return out


def test_two_workers_step_like_one_worker_with_the_double_batch(
    ray_local, fixed_batches, tmp_path
) -> None:
    """The real train steps of both trainers, 2 DDP workers × batch 2 vs one process × batch 4
    (the same samples, the same seeded model): the losses are batch means of per-sample terms,
    so the averaged gradients and the parameters after each of two steps agree to float32
    rounding. The second step also runs DDP over parameters the first left unused."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = tmp_path / "out"
    out.mkdir()
    TorchTrainer(
        _steps_on_fixed_batches,
        train_loop_config={"batches": fixed_batches, "out": str(out)},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="two-workers-vs-one", storage_path=str(tmp_path / "ray")),
    ).fit()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, steps in fixed_batches.items():
            trainer = TRAINERS[name]
            model = trainer.model()
            optimizer = _sgd(model)
            for step, per_rank in enumerate(steps):
                before = _state(model)["params"]
                trainer.step(model, optimizer, per_rank[0] + per_rank[1], step)
                one = _state(model)
                two, other_rank = (
                    torch.load(out / f"{name}-{step}-{rank}.pt", weights_only=True)
                    for rank in (0, 1)
                )
                assert _max_difference(two["params"], other_rank["params"]) == 0.0
                params = _max_difference(two["params"], one["params"])
                update = _max_difference(one["params"], before)
                grads = _max_difference(two["grads"], one["grads"])
                largest = max(float(g.abs().max()) for g in one["grads"].values())
                print(
                    f"\n{name} step {step}: max |Δparam| {params:.2e} = {params / update:.1e} of "
                    f"the largest update, max |Δgrad| {grads:.2e} = {grads / largest:.1e} of the "
                    "largest gradient"
                )
                assert update > 0 and params <= TOLERANCE * update
                assert grads <= TOLERANCE * largest
    finally:
        torch.set_num_threads(threads)


def _sample_id(tracks: torch.Tensor) -> str:
    return hashlib.sha1(np.ascontiguousarray(tracks.numpy()).tobytes()).hexdigest()[:16]


def _append(path: Path, **row: Any) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _recording_tracksto4d_worker(config: dict[str, Any], record: str, fail_at: int) -> None:
    """The real TracksTo4D worker loop with its step and checkpoint writer wrapped: each step
    logs (pid, step, sample ids) per rank, each save (rank, step); rank 1 fails once, at step
    `fail_at`."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    folder = Path(record)
    run_worker = train_loop.run_worker

    def recording_run_worker(worker_config, restore, step_fn, save) -> None:
        def recorded_step(model, optimizer, batch, index, device):
            ids = [_sample_id(t) for t in batch["tracks"]]
            _append(folder / f"steps-{rank}.jsonl", pid=os.getpid(), step=index, ids=ids)
            if rank == 1 and index == fail_at and not (folder / "failed").exists():
                (folder / "failed").touch()
                raise RuntimeError("worker 1 fails once")
            return step_fn(model, optimizer, batch, index, device)

        def recorded_save(checkpoint_dir, model, optimizer, index, history, keep) -> None:
            _append(folder / "saves.jsonl", rank=rank, step=index)
            save(checkpoint_dir, model, optimizer, index, history, keep)

        run_worker(worker_config, restore, recorded_step, recorded_save)

    with mock.patch.object(tracksto4d, "run_worker", recording_run_worker):
        tracksto4d.train_loop_per_worker(config)


def _passes(rows: list[dict[str, Any]], start: int, steps_per_pass: int) -> dict[int, list[str]]:
    """Sample ids per pass over the shard of one worker's run that started at step `start`."""
    passes: dict[int, list[str]] = {}
    for row in rows:
        passes.setdefault((row["step"] - start) // steps_per_pass, []).extend(row["ids"])
    return passes


@pytest.mark.slow
def test_two_workers_shard_samples_checkpoint_on_rank_0_and_resume_after_a_failure(
    ray_local, synth_dir, tmp_path
) -> None:
    """The real TracksTo4D loop over the streamed clip dataset, 2 workers × batch 2 on 9
    samples: Ray Train's equal streaming split gives each worker 4 per pass (1 dropped), so
    2 steps per pass; worker 1 fails at step 3 (checkpoint at 2), Ray Train restarts the group
    (max_failures=1), and the run resumes at step 2 and ends at 4. In every pass the workers'
    samples are disjoint and none repeats; only rank 0 writes checkpoints."""
    record, checkpoints = tmp_path / "record", tmp_path / "ckpt"
    record.mkdir()
    sample_config = TrackConfig(frames=12, tracks=32, min_visible=6, samples_per_clip=5)
    settings = tracksto4d.TrainSettings(
        npz=str(synth_dir / "npz"),
        checkpoint_dir=str(checkpoints),
        steps=4,
        batch_size=1,
        lr=1e-3,
        limit=1,
        checkpoint_every=2,
        log_every=1,
        num_workers=WORKERS,
        cpus_per_worker=0.5,
        torch_threads=1,
        max_failures=1,
        warmup_steps=1,
        frames=sample_config.frames,
        tracks=sample_config.tracks,
        min_visible=sample_config.min_visible,
        samples_per_clip=sample_config.samples_per_clip,
    )
    uris = [str(p) for p in sorted((synth_dir / "npz").glob("*.npz"))[: settings.limit]]
    every_id = {
        _sample_id(torch.from_numpy(s["tracks"])) for s in samples_from_uris(uris, sample_config)
    }
    assert len(every_id) == 5
    worker = functools.partial(_recording_tracksto4d_worker, record=str(record), fail_at=3)
    dataset = tracksto4d.read_samples(settings.npz, sample_config, settings.limit)
    latest = train_loop.fit(worker, tracksto4d.WORKER_KEYS, dataset, settings, "t4d-two")

    assert latest["step"] == 4
    assert [(m["step"], m["start_step"]) for m in latest["history"]] == [
        (1, 0), (2, 0), (3, 2), (4, 2)
    ]  # fmt: skip
    assert _rows(record / "saves.jsonl") == [{"rank": 0, "step": s} for s in (2, 4)]
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "latest.json",
        "model_step00000002.json",
        "model_step00000002.pt",
        "model_step00000004.json",
        "model_step00000004.pt",
    ]
    _, checkpoint = tracksto4d.load_tracksto4d(
        str(checkpoints / "model_step00000004.pt"), with_checkpoint=True
    )
    adam_steps = {int(s["step"]) for s in checkpoint["optimizer_state_dict"]["state"].values()}
    assert adam_steps == {3, 4}  # resumed, not restarted; the warm-up step leaves fc1 out

    runs: dict[int, dict[int, list[dict[str, Any]]]] = {}  # pid's first step -> rank -> rows
    for rank in (0, 1):
        by_pid: dict[int, list[dict[str, Any]]] = {}
        for row in _rows(record / f"steps-{rank}.jsonl"):
            by_pid.setdefault(row["pid"], []).append(row)
        for rows in by_pid.values():
            runs.setdefault(rows[0]["step"], {})[rank] = rows
    assert sorted(runs) == [0, 2]  # the first run, and the one resumed from step 2
    first, resumed = runs[0], runs[2]
    assert [r["step"] for r in first[1]] == [0, 1, 2, 3]  # failed at its step 3
    for run_rows in (resumed[0], resumed[1]):
        assert [r["step"] for r in run_rows] == [2, 3]
    for start, run in runs.items():
        passes = [_passes(run[rank], start, steps_per_pass=2) for rank in (0, 1)]
        for index in passes[0].keys() & passes[1].keys():
            ids = [passes[rank][index] for rank in (0, 1)]
            assert all(len(set(i)) == len(i) for i in ids)  # no sample twice on one worker
            assert not set(ids[0]) & set(ids[1])  # nor on both
            assert set(ids[0]) | set(ids[1]) <= every_id
            if len(ids[0]) == len(ids[1]) == 2:  # a whole pass: all but one sample
                assert len(set(ids[0]) | set(ids[1])) == len(every_id) - 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dynadust3r", "tracksto4d"])
def test_training_jobs_with_two_workers_resume(ray_local, synth_dir, tmp_path, name) -> None:
    """Each training job as a user runs it (`jobs/train_*.py` flags) with --num-workers 2:
    2 steps, then a re-run with the same checkpoint folder continues to 4."""
    from s4d_ray.cli import job_main

    model_flags = {
        "dynadust3r": [
            "--videos", str(synth_dir / "raw"), "--image-size", "32", "--min-tracks", "16",
            "--pairs-per-clip", "2",
        ],
        "tracksto4d": [
            "--frames", "12", "--tracks", "32", "--min-visible", "6", "--samples-per-clip", "2",
            "--warmup-steps", "1",
        ],
    }[name]  # fmt: skip
    checkpoints = tmp_path / "ckpt"
    for steps in (2, 4):
        args = [
            "--npz", str(synth_dir / "npz"), "--checkpoint-dir", str(checkpoints), "--tiny",
            "--steps", str(steps), "--batch-size", "1", "--limit", "2", "--checkpoint-every", "2",
            "--log-every", "1", "--num-workers", "2", "--cpus-per-worker", "0.5",
            "--torch-threads", "1", "--lr", "1e-3", *model_flags,
        ]  # fmt: skip
        assert job_main(f"jobs/train_{name}.py", args) == 0
    latest = train_loop.read_latest(str(checkpoints))
    assert latest["step"] == 4
    assert [(m["step"], m["start_step"]) for m in latest["history"]] == [
        (1, 0), (2, 0), (3, 2), (4, 2)
    ]  # fmt: skip
