"""Train DynaDUSt3R on Stereo4D clips with Ray Train (the `ray job submit` entry point).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_dynadust3r.py --npz gs://stereo4d/train --videos gs://my-bucket/raw \
        --init gs://my-bucket/DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth \
        --checkpoint-dir gs://my-bucket/dynadust3r --num-workers 8 --use-gpu

Re-running with the same --checkpoint-dir resumes. The loop is `s4d_ray.dynadust3r.train`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Ray working dir
from s4d_ray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main(__file__))
