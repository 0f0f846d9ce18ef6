"""DynaDUSt3R training loss: DUSt3R's confidence-weighted 3D regression on pointmaps and moved points.

Per view v and valid pixel p (DUSt3R `ConfLoss(Regr3D(L21))`):
    ℓ = c_p · ‖P̂_p / ŝ − P_p / s‖ − α · log c_p,
averaged over each sample's valid pixels, then over the batch, summed over the two views
(DUSt3R pools the valid pixels of the whole batch; the per-sample mean makes a DDP step of W
workers × batch b equal one of a single worker × W·b: `train_loop.sample_mean`). P̂ is the
predicted pointmap (view 1 `pts3d`, view 2 `pts3d_in_other_view`, both in camera 1), P the
target, c the predicted confidence (≥ 1), α = 0.2. The same term on the moved points —
pointmap + predicted motion (`pts3d + motion`) against the target point at the query time,
weighted by `motion_conf`, over the pixels whose track is known at that time — is added with
weight `motion_weight`.

Scale (`norm_mode`):
* "metric" (default): s = ŝ = 1. Stereo4D tracks are metric (6.3 cm baseline), the evaluation
  reports metric end-point errors without alignment, so the model is asked for metres.
* "avg_dis" (DUSt3R): per sample, ŝ and s are the mean distance to camera 1 of the predicted
  resp. target pointmap points over the valid pixels of both views; the moved points are
  divided by the same factors. Scale-free, for mixing with non-metric data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from s4d_ray.train_loop import sample_mean

NORM_MODES = ("metric", "avg_dis")


@dataclass(frozen=True)
class LossConfig:
    norm_mode: str = "metric"
    alpha: float = 0.2
    motion_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.norm_mode not in NORM_MODES:
            raise ValueError(f"norm_mode must be one of {NORM_MODES}, got {self.norm_mode!r}")
        if self.alpha <= 0:
            raise ValueError("alpha must be > 0")


def average_distance(pts1: Tensor, pts2: Tensor, valid1: Tensor, valid2: Tensor) -> Tensor:
    """Per-sample mean ‖p‖ [B] over valid pixels of two pointmaps [B,H,W,3] (masks [B,H,W])."""
    total = (pts1.norm(dim=-1) * valid1).flatten(1).sum(1) + (pts2.norm(dim=-1) * valid2).flatten(
        1
    ).sum(1)
    count = valid1.flatten(1).sum(1) + valid2.flatten(1).sum(1)
    return (total / (count + 1e-8)).clamp(min=1e-8)


def conf_regression(
    pred: Tensor, target: Tensor, conf: Tensor, valid: Tensor, alpha: float
) -> Tensor:
    """Batch mean of each sample's mean over its valid pixels of conf·‖pred − target‖ −
    α·log(conf); a sample without valid pixels adds 0."""
    distance = (pred[valid] - target[valid]).norm(dim=-1)
    confidence = conf[valid]
    return sample_mean(confidence * distance - alpha * confidence.log(), valid)


def dynadust3r_loss(
    res1: Mapping[str, Tensor],
    res2: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    config: LossConfig = LossConfig(),
) -> tuple[Tensor, dict[str, float]]:
    """Total loss (scalar) and its parts. `res1`/`res2`: the model's outputs with motion;
    `target`: pts1, valid1, motion1, motion_valid1, pts2, valid2, motion2, motion_valid2
    ([B,H,W,3] m in camera 1 / [B,H,W] bool, as `dynadust3r_data.build_sample`)."""
    pred1, pred2 = res1["pts3d"].float(), res2["pts3d_in_other_view"].float()
    moved_pred1 = pred1 + res1["motion"].float()
    moved_pred2 = pred2 + res2["motion"].float()
    gt1, gt2 = target["pts1"].float(), target["pts2"].float()
    moved_gt1, moved_gt2 = gt1 + target["motion1"].float(), gt2 + target["motion2"].float()
    valid1, valid2 = target["valid1"].bool(), target["valid2"].bool()
    if config.norm_mode == "avg_dis":
        pred_scale = average_distance(pred1, pred2, valid1, valid2)[:, None, None, None]
        gt_scale = average_distance(gt1, gt2, valid1, valid2)[:, None, None, None]
        pred1, pred2 = pred1 / pred_scale, pred2 / pred_scale
        moved_pred1, moved_pred2 = moved_pred1 / pred_scale, moved_pred2 / pred_scale
        gt1, gt2 = gt1 / gt_scale, gt2 / gt_scale
        moved_gt1, moved_gt2 = moved_gt1 / gt_scale, moved_gt2 / gt_scale
    alpha = config.alpha
    parts = {
        "pts_1": conf_regression(pred1, gt1, res1["conf"], valid1, alpha),
        "pts_2": conf_regression(pred2, gt2, res2["conf"], valid2, alpha),
        "moved_1": conf_regression(
            moved_pred1, moved_gt1, res1["motion_conf"], target["motion_valid1"].bool(), alpha
        ),
        "moved_2": conf_regression(
            moved_pred2, moved_gt2, res2["motion_conf"], target["motion_valid2"].bool(), alpha
        ),
    }
    total = (
        parts["pts_1"]
        + parts["pts_2"]
        + config.motion_weight * (parts["moved_1"] + parts["moved_2"])
    )
    return total, {name: float(value.detach()) for name, value in parts.items()}


def moved_point_errors(
    res1: Mapping[str, Tensor],
    res2: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    scale: Tensor | None = None,
) -> Tensor:
    """3D end-point errors [M] (target units, m) of the moved points at the query time, over the
    motion-valid pixels of both views; predictions first multiplied by `scale` [B] if given."""
    errors = []
    for view, res, pts_key in ((1, res1, "pts3d"), (2, res2, "pts3d_in_other_view")):
        moved = res[pts_key].float() + res["motion"].float()
        if scale is not None:
            moved = moved * scale[:, None, None, None]
        gt = target[f"pts{view}"].float() + target[f"motion{view}"].float()
        valid = target[f"motion_valid{view}"].bool()
        errors.append((moved[valid] - gt[valid]).norm(dim=-1))
    return torch.cat(errors)


def least_squares_scale(
    res1: Mapping[str, Tensor], res2: Mapping[str, Tensor], target: Mapping[str, Tensor]
) -> Tensor:
    """Per-sample s [B] minimising Σ‖s·P̂ − P‖² over the valid pointmap pixels of both views
    (fitted on the pointmaps, not on the moved points that are evaluated)."""
    numerators, denominators = [], []
    for view, res, pts_key in ((1, res1, "pts3d"), (2, res2, "pts3d_in_other_view")):
        pred, gt = res[pts_key].float(), target[f"pts{view}"].float()
        valid = target[f"valid{view}"].float()
        numerators.append(((pred * gt).sum(-1) * valid).flatten(1).sum(1))
        denominators.append(((pred * pred).sum(-1) * valid).flatten(1).sum(1))
    numerator = numerators[0] + numerators[1]
    denominator = denominators[0] + denominators[1]
    return numerator / denominator.clamp(min=1e-12)
