"""One Ray actor class per pinned model: load once in the constructor, one clip per call.

Each actor is a callable class for `Dataset.map(..., compute=ActorPoolStrategy(...))`; the
stage logic it runs lives in `s4d_ray.clip_stages` and is testable without Ray.
"""
