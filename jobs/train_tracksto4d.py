"""Train TracksTo4D on Stereo4D clips with Ray Train (the `ray job submit` entry point).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_tracksto4d.py --npz gs://stereo4d/train \
        --init gs://my-bucket/TracksTo4D_pretrained_cats_dogs.pt \
        --checkpoint-dir gs://my-bucket/tracksto4d --num-workers 4 --use-gpu

No video is needed: 2D tracks are the release 3D tracks projected into their cameras.
Re-running with the same --checkpoint-dir resumes. The loop is `s4d_ray.tracksto4d.train`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Ray working dir
from s4d_ray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main(__file__))
