"""Build DeepLab frozen graphs in the official release format from a PyTorch model's weights.

The GraphDef holds every variable as a Const node under its official name, in TF layout
(conv HWIO, depthwise [H,W,C,1]), plus the op nodes that tell how the graph was exported:
a `DepthwiseConv2dNative` per separable conv (its `strides`) and, for atrous ones, the
`SpaceToBatchND` with its `block_shape` Const, named as TF1 names them. Packed like the release:
`<dir>/frozen_inference_graph.pb` inside a .tar.gz.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import torch
from tensorboard.compat.proto import graph_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

from s4d_ray.models import deeplab


def official_arrays(model: deeplab.DeepLabV3Plus) -> dict[str, np.ndarray]:
    """Official variable name -> value in TF layout, from a model's state dict."""
    state = model.state_dict()
    arrays = {}
    for name in deeplab.expected_official_shapes(model.config.num_classes):
        value = state[deeplab.state_dict_key(name)].cpu().numpy()
        if value.ndim == 4:
            # OIHW -> HWIO and [C,1,H,W] -> [H,W,C,1]: the inverse of tf_to_torch_layout.
            axes = (2, 3, 0, 1) if name.endswith("depthwise_weights") else (2, 3, 1, 0)
            value = value.transpose(axes)
        arrays[name] = np.ascontiguousarray(value, dtype=np.float32)
    return arrays


def randomize(model: deeplab.DeepLabV3Plus, seed: int) -> deeplab.DeepLabV3Plus:
    """Fill every weight and BN statistic with well-scaled random values (in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith(("running_var", "bn.weight")):
                value.copy_(0.5 + torch.rand(value.shape, generator=generator))
            elif key.endswith(("running_mean", "bias")):
                value.copy_(0.1 * torch.randn(value.shape, generator=generator))
            else:
                fan_in = value[0].numel()
                value.copy_(torch.randn(value.shape, generator=generator) / fan_in**0.5)
    return model


def _tensor_proto(value: np.ndarray) -> tensor_pb2.TensorProto:
    dtype = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.int32): types_pb2.DT_INT32}
    proto = tensor_pb2.TensorProto(dtype=dtype[value.dtype])
    proto.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in value.shape]
        )
    )
    proto.tensor_content = value.astype(value.dtype.newbyteorder("<")).tobytes()
    return proto


def _add_const(graph: graph_pb2.GraphDef, name: str, value: np.ndarray) -> None:
    node = graph.node.add(name=name, op="Const")
    tensor = node.attr["value"].tensor
    tensor.CopyFrom(_tensor_proto(value))
    node.attr["dtype"].type = tensor.dtype


def _add_depthwise_ops(graph: graph_pb2.GraphDef, scope: str, stride: int, rate: int) -> None:
    conv = graph.node.add(name=f"{scope}/depthwise", op="DepthwiseConv2dNative")
    conv.input.extend([f"{scope}/depthwise/SpaceToBatchND", f"{scope}/depthwise_weights/read"])
    conv.attr["strides"].list.i.extend([1, stride, stride, 1])
    conv.attr["padding"].s = b"VALID" if stride > 1 or rate > 1 else b"SAME"
    if rate > 1:
        _add_const(
            graph, f"{scope}/depthwise/SpaceToBatchND/block_shape", np.array([rate, rate], np.int32)
        )
        space = graph.node.add(name=f"{scope}/depthwise/SpaceToBatchND", op="SpaceToBatchND")
        space.input.extend(["input", f"{scope}/depthwise/SpaceToBatchND/block_shape"])


def build_graph_def(arrays: dict[str, np.ndarray], config: deeplab.DeepLabConfig) -> bytes:
    """Serialized GraphDef: official Consts + the depthwise op nodes of `config`'s export."""
    graph = graph_pb2.GraphDef()
    graph.node.add(name="ImageTensor", op="Placeholder").attr["dtype"].type = types_pb2.DT_UINT8
    for name, value in arrays.items():
        _add_const(graph, name, value)
        read = graph.node.add(name=f"{name}/read", op="Identity", input=[name])
        read.attr["T"].type = types_pb2.DT_FLOAT
    plan = iter(deeplab.unit_strides_and_rates(config.output_stride))
    for flow, block, units, *_ in deeplab._XCEPTION65_BLOCKS:
        for unit in range(1, units + 1):
            stride, rate = next(plan)
            for index in (1, 2, 3):
                scope = (
                    f"xception_65/{flow}/block{block}/unit_{unit}/xception_module/"
                    f"separable_conv{index}_depthwise"
                )
                _add_depthwise_ops(graph, scope, stride if index == 3 else 1, rate)
    for index, rate in enumerate(config.atrous_rates, 1):
        _add_depthwise_ops(graph, f"aspp{index}_depthwise", 1, rate)
    return graph.SerializeToString()


def release_tarball(graph_bytes: bytes) -> bytes:
    """A .tar.gz laid out like the release: `<dir>/frozen_inference_graph.pb` (+ a checkpoint stub).

    gzip level 0: random weights do not compress, and storing keeps the test fast.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=0) as archive:
        for name, data in (
            ("model.ckpt.index", b"not read"),
            ("frozen_inference_graph.pb", graph_bytes),
        ):
            info = tarfile.TarInfo(f"deeplabv3_xception_ade20k_train/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
