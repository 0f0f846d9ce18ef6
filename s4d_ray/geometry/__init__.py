"""Cameras and rectification: the rectified perspective camera, poses, and VR180 equirect →
rectified stereo pairs."""
