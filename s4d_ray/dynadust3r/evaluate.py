"""DynaDUSt3R evaluation (`s4d eval-dynadust3r`): the paper's 3D end-point error.

On held-out clips, the 3D end-point error (m) of the moved points (pointmap + predicted motion)
at the query time against the ground-truth track positions, and the fractions of points under
5 cm and 10 cm. The data are metric, so no scale alignment unless asked (`align_scale`: one
least-squares scale per pair, fitted on the pointmaps).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from s4d_ray.dynadust3r.data import TARGET_COLUMNS, FilterCounts, SampleConfig, iter_samples
from s4d_ray.dynadust3r.inference import images_to_views
from s4d_ray.dynadust3r.loss import least_squares_scale, moved_point_errors
from s4d_ray.io import fs
from s4d_ray.models.device import autocast, pick_device
from s4d_ray.models.dynadust3r import DynaDUSt3R, load_dust3r


def collate(samples: list[Mapping[str, Any]], device: torch.device) -> dict[str, Tensor]:
    """Stack samples' numeric columns into tensors on `device` (drops `clip_id`)."""
    keys = [k for k in samples[0] if k != "clip_id"]
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])).to(device) for k in keys}


def endpoint_summary(errors: np.ndarray) -> dict[str, float]:
    """EPE (m) and the fractions under 5 cm and 10 cm of 3D end-point errors [M] m."""
    if errors.size == 0:
        return {"epe_m": float("nan"), "under_5cm": float("nan"), "under_10cm": float("nan")}
    return {
        "epe_m": float(errors.mean()),
        "under_5cm": float((errors < 0.05).mean()),
        "under_10cm": float((errors < 0.10).mean()),
    }


@torch.no_grad()
def evaluate_model(
    model: DynaDUSt3R,
    samples: Iterable[Mapping[str, Any]],
    align_scale: bool = False,
    batch_size: int = 4,
    device: torch.device | None = None,
    precision: str = "bf16",
) -> dict[str, Any]:
    """EPE of the moved points over all samples (see the module docstring), plus counts;
    on CUDA under the autocast of `precision`."""
    device = device or next(model.parameters()).device
    model.eval()
    errors: list[np.ndarray] = []
    pairs = 0
    batch: list[Mapping[str, Any]] = []

    def flush() -> None:
        nonlocal pairs
        tensors = collate(batch, device)
        view1, view2 = images_to_views(tensors["image1"], tensors["image2"], device)
        with autocast(device.type, precision, cuda_only=True):
            res1, res2 = model(view1, view2, tensors["query_time"].float())
        target = {k: tensors[k] for k in TARGET_COLUMNS}
        scale = least_squares_scale(res1, res2, target) if align_scale else None
        errors.append(moved_point_errors(res1, res2, target, scale).cpu().numpy())
        pairs += len(batch)
        batch.clear()

    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    all_errors = np.concatenate(errors) if errors else np.zeros(0)
    return {
        **endpoint_summary(all_errors),
        "points": int(all_errors.size),
        "pairs": pairs,
        "align_scale": align_scale,
    }


def evaluate_checkpoint(
    checkpoint: str,
    npz_uri: str,
    videos_uri: str = "",
    rectified_uri: str = "",
    limit: int | None = None,
    align_scale: bool = False,
    config: SampleConfig | None = None,
    device: str = "auto",
    batch_size: int = 4,
) -> dict[str, Any]:
    """Load a DUSt3R/DynaDUSt3R checkpoint and evaluate it on the clips under `npz_uri`."""
    model = load_dust3r(checkpoint).to(torch.device(pick_device(device)))
    counts = FilterCounts()
    config = config or SampleConfig()
    samples = iter_samples(npz_uri, videos_uri, rectified_uri, config, limit, counts)
    result = evaluate_model(model, samples, align_scale, batch_size)
    result.update(checkpoint=checkpoint, npz=npz_uri, filters=counts.as_dict())
    return result


def write_json(result: Mapping[str, Any], uri: str) -> None:
    """Write a result dict as indented JSON to any fsspec URI."""
    fs.write_bytes(uri, (json.dumps(result, indent=2, sort_keys=True) + "\n").encode())
