"""Ray actors for models used outside the engine's own pipeline (callable classes for
`Dataset.map_batches(..., compute=ActorPoolStrategy(...))` in your own Ray Data jobs).

The engine's model actors — SEA-RAFT/SGBM (`StereoActor`), BootsTAP/Lucas–Kanade
(`TrackingActor`), DeepLab (`SegmentationActor`) and the optimiser reducer (`OptimizeActor`) —
are built from the one stage list, `s4d_ray/engine/stage_list.py`, by
`s4d_ray/engine/runner.py`, so that the Ray graph and the in-process runner cannot drift
apart and the library never imports this package.
"""
