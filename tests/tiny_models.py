"""Tiny model configurations shared by tests (fast on CPU, same code paths as full size)."""

from s4d_ray.models.sea_raft import SEARAFTConfig

TINY_SEA_RAFT_KEYS = {
    "use_var": True,
    "var_min": 0,
    "var_max": 10,
    "pretrain": "resnet18",
    "initial_dim": 8,
    "block_dims": [8, 12, 16],
    "radius": 2,
    "dim": 8,
    "num_blocks": 1,
    "iters": 2,
}
"""Official SEA-RAFT config keys of a tiny model."""

TINY_SEA_RAFT = SEARAFTConfig.from_dict(TINY_SEA_RAFT_KEYS)
