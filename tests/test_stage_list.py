"""The one stage list drives the Ray Data graph, the in-process runner and the config."""

from __future__ import annotations

import pytest

from s4d_ray.engine.config import PipelineConfig, config_from_dict
from s4d_ray.engine.rows import ENGINE_COLUMNS, INPUT_COLUMNS, clip_spec
from s4d_ray.engine.stage_list import ACTOR, REDUCER, STAGES, TASK, default_resources


def test_every_stage_has_resources_for_both_backends_and_config_keys_follow_the_list():
    names = [spec.name for spec in STAGES]
    assert len(set(names)) == len(names)
    for backend in ("cpu", "neural"):
        assert list(default_resources(backend)) == names
        assert list(PipelineConfig(backend=backend).stages) == names
    for spec in STAGES:
        assert spec.kind in (TASK, ACTOR, REDUCER)
        assert (spec.batch_size is not None) == (spec.kind == REDUCER), spec.name
    with pytest.raises(ValueError, match="unknown stage 'trackin'"):
        config_from_dict({"stages": {"trackin": {"num_cpus": 1}}})


def test_the_ray_graph_has_one_operator_per_stage_in_list_order():
    import ray

    from s4d_ray.engine.pipeline import build_dataset

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        plan = str(build_dataset([clip_spec("abc_1", "x.npz", "v")], PipelineConfig(), "/tmp/o"))
    finally:
        ray.shutdown()
    expected = [
        f"{'MapBatches' if spec.kind == REDUCER else 'Map'}"
        f"({spec.actor_name if spec.pooled else spec.name})"
        for spec in STAGES
    ]
    positions = [plan.find(op) for op in expected]
    assert -1 not in positions, (expected, plan)
    assert positions == sorted(positions, reverse=True)  # printed from the last operator up


def test_each_stage_reads_only_columns_that_reach_it():
    """The declarations chain up: a column a stage reads or drops is an input or added by an
    earlier stage and not yet dropped (the runners check each transform against its own)."""
    available = set(INPUT_COLUMNS) | ENGINE_COLUMNS
    for spec in STAGES:
        missing = (set(spec.reads) | set(spec.drops)) - available
        assert not missing, (
            f"stage {spec.name!r} reads or drops {sorted(missing)} before any stage adds them"
        )
        available = (available | set(spec.adds)) - set(spec.drops)
