"""Export engine outputs (run with --dense) as 4D pointmap windows (WebDataset shards) on Ray.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml -- \
        python jobs/export_pointmaps.py --input gs://my-bucket/stereo4d-out \
        --output gs://my-bucket/pointmaps --frames 17 --size 512

Writes URI/shards/*.tar, URI/reports/, URI/runs/, URI/failures/ and URI/summary.json.
Re-running with the same output skips exported clips.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

if __package__ in (None, ""):  # `python jobs/export_pointmaps.py` from a Ray working dir
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s4d_ray.pointmaps.command import add_arguments, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
