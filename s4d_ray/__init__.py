"""s4d-ray: stereo VR180 video to metric 4D training data (Stereo4D), distributed with Ray."""

__version__ = "0.1.0"
