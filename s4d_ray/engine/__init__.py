"""The engine: per-clip stage transforms, the one stage list, the Ray Data pipeline and its
in-process twin, configuration and metrics."""
