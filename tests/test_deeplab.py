"""DeepLabv3+ Xception-65 (ADE20K): official checkpoint layout, loading, pre/post-processing,
and the segmentation stage. Frozen graphs are built in the release format from random weights."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tensorboard.compat.proto import tensor_pb2, types_pb2

from s4d_ray.models import deeplab
from s4d_ray.models.weights import CheckpointError
from s4d_ray.stages import segmentation
from tests import deeplab_graph_builder as builder

FIXTURE = Path(__file__).parent / "fixtures" / "deeplab_xception65_ade20k_keys.json"
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def source_model() -> deeplab.DeepLabV3Plus:
    return builder.randomize(deeplab.DeepLabV3Plus(), seed=3).eval()


@pytest.fixture(scope="module")
def release_tarball(source_model, tmp_path_factory) -> Path:
    """A release-format tarball of `source_model`'s weights, exported at output stride 8."""
    arrays = builder.official_arrays(source_model)
    graph = builder.build_graph_def(arrays, deeplab.DeepLabConfig(8, (12, 24, 36)))
    path = tmp_path_factory.mktemp("deeplab") / "deeplabv3_xception_ade20k_train_2018_05_29.tar.gz"
    path.write_bytes(builder.release_tarball(graph))
    return path


@pytest.fixture(scope="module")
def loaded_model(release_tarball) -> deeplab.DeepLabV3Plus:
    return deeplab.load_deeplab(str(release_tarball))


@pytest.fixture(scope="module")
def converted_checkpoint(release_tarball) -> Path:
    """The release tarball converted once to safetensors (what a cluster job would cache)."""
    state, config = deeplab.read_frozen_graph(str(release_tarball))
    path = release_tarball.parent / "deeplab_xception65_ade20k.safetensors"
    deeplab.save_converted(state, config, str(path))
    return path


def test_official_variables_match_our_state_dict():
    recorded = json.loads(FIXTURE.read_text())["variables"]
    official = {name: tuple(shape) for name, shape in recorded.items()}
    assert official == deeplab.expected_official_shapes()
    assert len(official) == 732
    with torch.device("meta"):
        state = deeplab.DeepLabV3Plus().state_dict()
    ours = {
        deeplab.state_dict_key(name): deeplab.tf_to_torch_layout(
            name, np.zeros(shape, np.float32)
        ).shape
        for name, shape in official.items()
    }
    assert ours == {key: tuple(value.shape) for key, value in state.items()}
    assert state["backbone.middle_flow.15.sep3.depthwise.weight"].shape == (728, 1, 3, 3)
    assert state["decoder.decoder_conv0.pointwise.weight"].shape == (256, 304, 1, 1)
    assert state["logits.weight"].shape == (151, 256, 1, 1)


def test_atrous_plan_follows_output_stride():
    plan8 = deeplab.unit_strides_and_rates(8)
    plan16 = deeplab.unit_strides_and_rates(16)
    assert len(plan8) == len(plan16) == 21
    # OS 8: entry blocks 1-2 strided, then everything stride 1; middle and exit1 at rate 2,
    # exit2 at rate 4. OS 16: entry blocks strided, exit1 stride 1 at rate 1, exit2 at rate 2.
    assert plan8[:3] == [(2, 1), (2, 1), (1, 1)]
    assert set(plan8[3:19]) == {(1, 2)} and plan8[19:] == [(1, 2), (1, 4)]
    assert plan16[:3] == [(2, 1)] * 3
    assert set(plan16[3:20]) == {(1, 1)} and plan16[20] == (1, 2)
    with torch.device("meta"):
        model = deeplab.DeepLabV3Plus(deeplab.DeepLabConfig(16, (6, 12, 18)))
    assert model.aspp3.depthwise.dilation == 18
    assert model.backbone.exit_flow[1].sep1.depthwise.dilation == 2
    with pytest.raises(ValueError):
        deeplab.unit_strides_and_rates(32)


def test_release_tarball_loads_unchanged(source_model, release_tarball, loaded_model):
    assert loaded_model.config == deeplab.DeepLabConfig(8, (12, 24, 36), 151)
    source_state = source_model.state_dict()
    for key, value in loaded_model.state_dict().items():
        assert torch.equal(value, source_state[key]), key
    images = torch.rand(1, 3, 33, 49) * 2 - 1
    with torch.no_grad():
        expected = source_model(images)
        actual = loaded_model(images)
    assert actual.shape == (1, 151, 9, 13)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_bare_pb_safetensors_and_output_stride_16(
    source_model, release_tarball, converted_checkpoint, tmp_path
):
    with tarfile.open(release_tarball) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(".pb"))
        graph_bytes = archive.extractfile(member).read()
    pb_path = tmp_path / "frozen_inference_graph.pb"
    pb_path.write_bytes(graph_bytes)
    from_pb = deeplab.load_deeplab(str(pb_path))
    from_safetensors = deeplab.load_deeplab(str(converted_checkpoint))
    assert from_pb.config == from_safetensors.config == deeplab.DeepLabConfig(8, (12, 24, 36))
    source_state = source_model.state_dict()
    for model in (from_pb, from_safetensors):
        for key, value in model.state_dict().items():
            assert torch.equal(value, source_state[key]), key
        assert not any(parameter.requires_grad for parameter in model.parameters())

    # Same weights exported at output stride 16: the converter reads the rates from the ops.
    arrays = builder.official_arrays(source_model)
    pb16 = tmp_path / "os16.pb"
    pb16.write_bytes(builder.build_graph_def(arrays, deeplab.DeepLabConfig(16, (6, 12, 18))))
    _, config16 = deeplab.read_frozen_graph(str(pb16))
    assert config16 == deeplab.DeepLabConfig(16, (6, 12, 18), 151)


def test_tensor_proto_values_from_typed_fields():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    assert np.array_equal(deeplab.tensor_proto_to_numpy(proto), np.full((2, 3), 0.5, np.float32))
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[4, 5])
    proto.tensor_shape.dim.add(size=2)
    assert deeplab.tensor_proto_to_numpy(proto).tolist() == [4, 5]
    content = np.arange(6, dtype=np.float32).reshape(3, 2)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=content.tobytes())
    proto.tensor_shape.dim.add(size=3)
    proto.tensor_shape.dim.add(size=2)
    assert np.array_equal(deeplab.tensor_proto_to_numpy(proto), content)


def test_wrong_files_raise_checkpoint_error(tmp_path):
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xfe not a graph \x00\x01" * 10)
    with pytest.raises(CheckpointError, match="GraphDef"):
        deeplab.load_deeplab(str(garbage))

    empty_tar = tmp_path / "other.tar.gz"
    with tarfile.open(empty_tar, "w:gz") as archive:
        info = tarfile.TarInfo("model/readme.txt")
        archive.addfile(info)
    with pytest.raises(CheckpointError, match="frozen_inference_graph"):
        deeplab.load_deeplab(str(empty_tar))

    other_graph = tmp_path / "other_graph.pb"
    other_graph.write_bytes(
        builder.build_graph_def(
            {"resnet/conv1/weights": np.zeros((3, 3, 3, 8), np.float32)}, deeplab.DeepLabConfig()
        )
    )
    with pytest.raises(CheckpointError, match="not the DeepLabv3\\+ Xception-65"):
        deeplab.load_deeplab(str(other_graph))

    other_safetensors = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other_safetensors))
    with pytest.raises(CheckpointError, match="not a converted DeepLab"):
        deeplab.load_deeplab(str(other_safetensors))

    with pytest.raises(CheckpointError, match="does not exist"):
        deeplab.load_deeplab(str(tmp_path / "missing.tar.gz"))


def test_preprocessing_as_the_exported_graph():
    assert deeplab.model_input_size(512, 512) == (513, 513)
    assert deeplab.model_input_size(300, 400) == (384, 513)
    assert deeplab.model_input_size(1080, 1920) == (288, 513)
    frame = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    resized = deeplab.resize_frame(frame)
    assert resized.shape == (384, 513, 3) and resized.dtype == np.uint8
    square = frame[:, :300]
    assert deeplab.resize_frame(square, input_size=300) is square

    images = deeplab.pad_and_normalize([resized[:, :400], resized[:10, :20]])
    assert images.shape == (2, 3, 513, 513)
    # The mean-pixel padding maps to exactly 0; pixels map [0, 255] -> [-1, 1].
    assert torch.all(images[0, :, :, 400:] == 0) and torch.all(images[1, :, 10:, :] == 0)
    expected = torch.from_numpy(resized[:10, :20].astype(np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(images[1, :, :10, :20], expected * (2 / 255) - 1)

    labels = np.arange(513 * 513).reshape(513, 513) % 151
    restored = deeplab.restore_labels(labels, (384, 513), (300, 400))
    assert restored.shape == (300, 400) and restored.dtype == np.uint8
    cropped = labels[:384, :513].astype(np.uint8)
    reference = cv2.resize(cropped, (400, 300), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(restored, reference)
    # cv2 nearest picks source index floor(dst * src / dst_size).
    assert restored[5, 7] == cropped[int(5 * 384 / 300), int(7 * 513 / 400)]


def test_segment_frames_matches_the_manual_pipeline(loaded_model):
    frames = np.random.default_rng(1).integers(0, 256, (3, 24, 40, 3), dtype=np.uint8)
    labels = deeplab.segment_frames(loaded_model, frames, batch_size=2, input_size=49)
    assert labels.shape == (3, 24, 40) and labels.dtype == np.uint8
    assert labels.max() < 151
    resized = deeplab.resize_frame(frames[2], input_size=49)
    assert resized.shape == (29, 49, 3)
    with torch.no_grad():
        predicted = loaded_model.predict_labels(deeplab.pad_and_normalize([resized], 49))
    assert predicted.shape == (1, 49, 49)
    expected = deeplab.restore_labels(predicted[0].numpy(), (29, 49), (24, 40))
    assert np.array_equal(labels[2], expected)
    with pytest.raises(ValueError, match="uint8"):
        deeplab.segment_frames(loaded_model, frames.astype(np.float32))


def test_label_names_cover_the_model_classes():
    """The model's class ids index LABEL_NAMES (0 = background); the drift filter's ids are
    checked against the reference in test_drift_filter."""
    assert deeplab.NUM_CLASSES == len(segmentation.LABEL_NAMES) == 151
    assert segmentation.LABEL_NAMES[0] == "background"


def test_cpu_segmenter_is_disabled_and_says_so():
    segmenter = segmentation.Segmenter(backend="cpu")
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    assert segmenter.enabled is False
    assert segmenter.segment(frames) is None
    provenance = segmenter.provenance()
    assert provenance["backend"] == "cpu" and provenance["model"] is None
    assert "drift filter off" in provenance["note"] and provenance["weights_uri"] is None
    with pytest.raises(ValueError, match="backend"):
        segmentation.Segmenter(backend="gpu")
    with pytest.raises(ValueError, match="not an option of the cpu segmentation backend"):
        segmentation.Segmenter(backend="cpu", precision="bf16")


def test_neural_segmenter_labels_frames(converted_checkpoint, loaded_model):
    segmenter = segmentation.Segmenter(
        backend="neural", weights_uri=str(converted_checkpoint), batch_size=2, input_size=49
    )
    assert segmenter.enabled
    frames = np.random.default_rng(2).integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    labels = segmenter.segment(frames)
    assert np.array_equal(labels, deeplab.segment_frames(loaded_model, frames, input_size=49))
    provenance = segmenter.provenance()
    assert provenance["model"] == "deeplabv3plus_xception65_ade20k"
    assert provenance["config"]["output_stride"] == 8 and provenance["config"]["input_size"] == 49
    assert provenance["weights_uri"] == str(converted_checkpoint)
    digest = hashlib.sha256(converted_checkpoint.read_bytes()).hexdigest()
    assert provenance["weights_sha256"] == digest and provenance["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision"):
        segmentation.Segmenter(
            backend="neural", weights_uri=str(converted_checkpoint), precision="int8"
        )
