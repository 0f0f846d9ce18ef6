"""Own VR180 videos without the release npz: clips, rig calibration and metric camera poses."""
