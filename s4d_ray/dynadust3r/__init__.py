"""DynaDUSt3R from Stereo4D clips: training samples, loss, the training loop (Ray Train),
inference and evaluation. The network itself is `s4d_ray.models.dynadust3r`."""

MAX_INPUT_SIZE = 1024
"""Largest long side (px) of a model input: 64x64 patches of 16 px, 4,096 tokens per view
(DUSt3R is trained at 512; attention memory grows with the square of the token count)."""
