"""DynaDUSt3R from Stereo4D clips: training samples, loss, the training loop (Ray Train),
inference and evaluation. The network itself is `s4d_ray.models.dynadust3r`."""
