"""Process Stereo4D clips into metric 4D tracks on a Ray cluster (the main job).

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml -- \
        python jobs/process_clips.py --npz gs://stereo4d/train --videos gs://my-bucket/raw \
        --output gs://my-bucket/stereo4d-out --backend neural

Writes OUTPUT/npz/<clip_id>.npz, OUTPUT/parquet/*.parquet, OUTPUT/failures/failures-all.parquet
and OUTPUT/summary.json. Re-running with the same output skips complete clips.

Your own VR180 videos: leave out --npz; every <video_id>.mp4 under --videos is split into
clips, its rig calibrated (OUTPUT/calibration/) and each clip posed (OUTPUT/ownvideo/) first.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Ray working dir
from s4d_ray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main(__file__))
