"""Synthetic VR180 clips with exact ground truth, accuracy against it, and the demo."""
