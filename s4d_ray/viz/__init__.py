"""Seeing the data: a Rerun 4D viewer per clip, the run report, shared colour scales."""
