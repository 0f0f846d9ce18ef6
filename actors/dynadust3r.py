"""DynaDUSt3R actor: loads a checkpoint once, predicts pointmaps and 3D motion for frame pairs.

ds.map_batches(DynaDUSt3RActor, fn_constructor_kwargs={"checkpoint": uri},
               compute=ActorPoolStrategy(size=4), num_gpus=1, batch_size=8)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from s4d_ray.dynadust3r.inference import predict_pairs
from s4d_ray.models.device import pick_device


class DynaDUSt3RActor:
    """Per batch: `image1`, `image2` uint8 [B,H,W,3] (same size, a multiple of the patch) and
    `query_time` [B] in [0,1] -> the batch plus pts3d_1/2, motion_1/2 [B,H,W,3] (camera of image
    1) and conf_1/2, motion_conf_1/2 [B,H,W], float32."""

    def __init__(self, checkpoint: str, device: str = "auto", torch_threads: int = 0):
        import torch

        from s4d_ray.models.dynadust3r import load_dust3r

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = torch.device(pick_device(device))
        self.model = load_dust3r(checkpoint).to(self.device).eval()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        outputs = predict_pairs(
            self.model,
            np.asarray(batch["image1"]),
            np.asarray(batch["image2"]),
            np.asarray(batch["query_time"], np.float32),
            self.device,
        )
        return {**batch, **outputs}
