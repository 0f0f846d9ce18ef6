"""Export engine outputs (run with --dense) as 4D pointmap windows (WebDataset shards) on Ray.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml -- \
        python jobs/export_pointmaps.py --input gs://my-bucket/stereo4d-out \
        --output gs://my-bucket/pointmaps --frames 17 --size 512

Writes URI/shards/*.tar, URI/reports/, URI/runs/, URI/failures/ and URI/summary.json.
Re-running with the same output skips exported clips.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Ray working dir
from s4d_ray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main(__file__))
