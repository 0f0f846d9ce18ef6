"""The model-stage registry is what the engine asks: a backend registered in a test is what
the config accepts and what the set-up builds, with no engine code naming it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from s4d_ray.engine.config import ConfigError, config_from_dict, load_config
from s4d_ray.engine.stage_list import STAGE, Job
from s4d_ray.errors import InputError
from s4d_ray.stages import base
from s4d_ray.stages.base import MODEL_STAGES, at_least, register_backend
from s4d_ray.stages.stereo import StereoMatcher


@dataclass(frozen=True)
class ToyOptions:
    """A toy stereo backend: every pixel matches `shift` px to its left."""

    shift: float = at_least(0, 1.0)
    label: str = "toy"


@dataclass(frozen=True)
class ToyNeuralOptions(ToyOptions):
    device: str = "cpu"
    precision: str = "fp32"


class ToyStereo:
    """Constant flows: -shift px left→right, +shift px right→left, y-flow 0."""

    def __init__(self, options: ToyOptions) -> None:
        self.options = options

    def __call__(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flow = np.zeros((*left.shape[:3], 2), np.float32)
        flow[..., 0] = self.options.shift
        return -flow, flow

    def provenance(self) -> dict[str, Any]:
        return {"model": self.options.label, "config": {"shift": self.options.shift}}


@pytest.fixture
def toy_stereo(monkeypatch):
    """ToyStereo registered as the stereo stage's cpu and neural backends for one test."""
    base.backend_names("stereo")  # the stage module registers its own backends first
    monkeypatch.setitem(base.REGISTRY, "stereo", dict(base.REGISTRY["stereo"]))
    register_backend("stereo", "cpu", ToyOptions)(ToyStereo)
    register_backend("stereo", "neural", ToyNeuralOptions)(ToyStereo)


def test_config_accepts_exactly_the_registered_options(toy_stereo, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("models:\n  stereo: {shift: 2.5, label: mine}\n")
    assert load_config(str(path)).models.stereo == {"shift": 2.5, "label": "mine"}
    bad = [
        ({"num_disparities": 64}, "models.stereo.num_disparities"),  # SGBM's, not the toy's
        ({"shift": -1.0}, "models.stereo.shift"),  # below its bound
        ({"shift": "far"}, "models.stereo.shift"),  # not a number
        ({"label": 3}, "models.stereo.label"),
    ]
    for options, key in bad:
        with pytest.raises(ConfigError) as raised:
            config_from_dict({"models": {"stereo": options}})
        assert raised.value.key == key
    with pytest.raises(ConfigError) as raised:
        config_from_dict({"backend": "neural", "models": {"stereo": {"precision": "bf16"}}})
    assert raised.value.key == "models.stereo.precision" and "models.precision" in str(raised.value)


def test_set_up_builds_the_registered_backend(toy_stereo, tmp_path):
    config = config_from_dict({"models": {"stereo": {"shift": 3.0}}})
    matcher = STAGE["stereo"].setup(Job(config, str(tmp_path)))
    assert isinstance(matcher, StereoMatcher) and isinstance(matcher.backend, ToyStereo)
    frames = np.zeros((2, 8, 12, 3), np.uint8)
    flow_fwd, flow_bwd = matcher(frames, frames)
    assert (flow_fwd[..., 0] == -3.0).all() and (flow_bwd[..., 0] == 3.0).all()
    assert matcher.provenance() == {"backend": "cpu", "model": "toy", "config": {"shift": 3.0}}
    with pytest.raises(ValueError, match="uint8"):
        matcher(frames.astype(np.float32), frames)


def test_set_up_fills_in_device_and_precision_where_the_backend_takes_them(toy_stereo, tmp_path):
    config = config_from_dict(
        {"backend": "neural", "models": {"device": "cpu", "precision": "bf16"}}
    )
    matcher = STAGE["stereo"].setup(Job(config, str(tmp_path)))
    assert matcher.backend.options == ToyNeuralOptions(device="cpu", precision="bf16")


def test_every_registered_backend_has_valid_defaults_and_a_stage(tmp_path):
    for stage in MODEL_STAGES:
        names = base.backend_names(stage)
        assert set(names) == {"cpu", "neural"}, stage
        for name in names:
            defaults = base.option_defaults(stage, name)
            assert base.validate_options(stage, name, {}) == base.backend_for(stage, name).options(
                **defaults
            )
    assert base.tiny_options("tracking", "cpu", tmp_path) == {}  # no files to write
    assert base.build_stage("segmentation", "cpu").enabled is False
    with pytest.raises(InputError, match="backend must be one of"):
        base.backend_for("tracking", "gpu")
    with pytest.raises(base.OptionError) as raised:
        base.validate_options("tracking", "cpu", {"resolution": 64})
    assert raised.value.option == "resolution" and "query_stride" in raised.value.message
