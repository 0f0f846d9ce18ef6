"""DeepLabv3+ with an Xception-65 backbone (ADE20K, 151 labels) in PyTorch.

Loads the official TensorFlow release unchanged
(`deeplabv3_xception_ade20k_train_2018_05_29.tar.gz`, a frozen GraphDef) without TensorFlow:
the GraphDef is parsed with the protos that tensorboard ships and its Const nodes become our
state dict. Inference reproduces the Stereo4D call of the exported graph:

1. resize the frame with PIL LANCZOS so it fits in 513x513 (long side 513, aspect kept);
2. pad bottom/right to 513x513 with the mean pixel 127.5, map [0, 255] to [-1, 1]
   (the padding becomes exactly 0);
3. Xception-65 + ASPP + decoder give logits at stride 4 (129x129), bilinearly upsampled
   (align_corners, as TF1 `resize_bilinear`) to 513x513, argmax;
4. crop the valid region and resize the labels back to the frame with nearest neighbour.

Architecture facts (tensorflow/models research/deeplab, core/xception.py and model.py):
entry flow conv 3x3/2 (32) + conv 3x3 (64), 3 strided modules (128, 256, 728), middle flow
16 residual modules (728), exit flow modules (728, 1024, 1024) and (1536, 1536, 2048 with
ReLU inside the separable convs). Every separable conv is depthwise 3x3 + BN, pointwise 1x1 + BN.
Strided convs pad explicitly (k_eff - 1 split evenly, then VALID), stride-1 convs use 'SAME':
both are symmetric padding of dilation * (k - 1) / 2 for the odd kernels here. Backbone BN
epsilon 1e-3, ASPP/decoder BN epsilon 1e-5. Output stride 8 uses ASPP rates 12/24/36, output
stride 16 uses 6/12/18; the converter reads which one the frozen graph was exported with.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from google.protobuf.message import DecodeError
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from tensorboard.compat.proto import graph_pb2, types_pb2
from torch import nn

from s4d_ray.limits import env_limit
from s4d_ray.models.weights import CheckpointError, CheckpointLimitError, checkpoint_file

DEFAULT_URI = (
    "http://download.tensorflow.org/models/deeplabv3_xception_ade20k_train_2018_05_29.tar.gz"
)
NUM_CLASSES = 151
INPUT_SIZE = 513
MEAN_PIXEL = 127.5
BACKBONE_BN_EPS = 1e-3
HEAD_BN_EPS = 1e-5
FROZEN_GRAPH_NAME = "frozen_inference_graph"
SAFETENSORS_FORMAT = "s4d_ray.deeplabv3plus_xception65"
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
MAX_GRAPH_BYTES = 512 << 20
"""Default cap on the frozen GraphDef read (from the tar member header or the file size,
before it is read; the release's is ~165 MB); `$S4D_MAX_DEEPLAB_GRAPH_BYTES` raises it."""
MAX_CLASSES = 4096
"""Most labels a DeepLab checkpoint may declare (ADE20K: 151)."""
MAX_ATROUS_RATE = 64
MAX_BLOCK_SHAPE_VALUES = 8
"""A SpaceToBatchND block_shape Const holds 2 values; more is refused before conversion."""


@dataclass(frozen=True)
class DeepLabConfig:
    """Export-time options of the frozen graph (the release uses output stride 8)."""

    output_stride: int = 8
    atrous_rates: tuple[int, int, int] = (12, 24, 36)
    num_classes: int = NUM_CLASSES


# --------------------------------------------------------------------------------------------
# Model


class FrozenBatchNorm(nn.Module):
    """Inference batch norm: `gamma * (x - mean) / sqrt(var + eps) + beta` per channel."""

    running_mean: torch.Tensor  # buffers, registered in __init__
    running_var: torch.Tensor

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class ConvBN(nn.Module):
    """Bias-free conv + batch norm (+ ReLU); symmetric padding dilation * (k - 1) / 2."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        eps: float,
        stride: int = 1,
        dilation: int = 1,
        depthwise: bool = False,
        relu: bool = True,
    ):
        super().__init__()
        groups = in_channels if depthwise else 1
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size),
            requires_grad=False,
        )
        nn.init.kaiming_normal_(self.weight)
        self.bn = FrozenBatchNorm(out_channels, eps)
        self.stride, self.dilation, self.groups, self.relu = stride, dilation, groups, relu
        self.padding = dilation * (kernel_size - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        x = self.bn(x)
        return F.relu(x) if self.relu else x


class SeparableConv(nn.Module):
    """Depthwise 3x3 (+BN) then pointwise 1x1 (+BN); ReLU after each only when `relu`."""

    def __init__(
        self, in_channels: int, out_channels: int, eps: float, stride=1, dilation=1, relu=False
    ):
        super().__init__()
        self.depthwise = ConvBN(
            in_channels, in_channels, 3, eps, stride, dilation, depthwise=True, relu=relu
        )
        self.pointwise = ConvBN(in_channels, out_channels, 1, eps, relu=relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionModule(nn.Module):
    """Three separable convs (stride on the last) + skip ('conv' 1x1, 'sum' or 'none').

    Without `relu_inside`, each separable conv is preceded by a ReLU instead (original
    Xception); the shortcut always reads the module input before any ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        depths: tuple[int, int, int],
        skip: str,
        stride: int,
        dilation: int,
        relu_inside: bool,
    ):
        super().__init__()
        self.relu_inside, self.skip = relu_inside, skip
        channels = (in_channels, *depths)
        self.sep1, self.sep2, self.sep3 = (
            SeparableConv(
                channels[i],
                channels[i + 1],
                BACKBONE_BN_EPS,
                stride if i == 2 else 1,
                dilation,
                relu_inside,
            )
            for i in range(3)
        )
        if skip == "conv":
            self.shortcut = ConvBN(
                in_channels, depths[-1], 1, BACKBONE_BN_EPS, stride=stride, relu=False
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Module output and the output of its second separable conv (decoder feature)."""
        residual = x
        second = x
        for index, sep in enumerate((self.sep1, self.sep2, self.sep3)):
            residual = sep(residual if self.relu_inside else F.relu(residual))
            if index == 1:
                second = residual
        if self.skip == "conv":
            return residual + self.shortcut(x), second
        if self.skip == "sum":
            return residual + x, second
        return residual, second


# (flow, block, units, depths, skip, nominal stride, relu inside separable convs)
_XCEPTION65_BLOCKS = (
    ("entry_flow", 1, 1, (128, 128, 128), "conv", 2, False),
    ("entry_flow", 2, 1, (256, 256, 256), "conv", 2, False),
    ("entry_flow", 3, 1, (728, 728, 728), "conv", 2, False),
    ("middle_flow", 1, 16, (728, 728, 728), "sum", 1, False),
    ("exit_flow", 1, 1, (728, 1024, 1024), "conv", 2, False),
    ("exit_flow", 2, 1, (1536, 1536, 2048), "none", 1, True),
)


def unit_strides_and_rates(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) per Xception-65 unit, in order, for a network `output_stride`.

    Follows `stack_blocks_dense`: once the target stride is reached, units run with stride 1
    and the atrous rate grows by the stride they would have had (root conv has stride 2).
    """
    if output_stride not in ASPP_RATES:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    target, current, rate = output_stride // 2, 1, 1
    plan = []
    for *_, units, _, _, stride, _ in _XCEPTION65_BLOCKS:
        for _ in range(units):
            if current == target:
                plan.append((1, rate))
                rate *= stride
            else:
                plan.append((stride, 1))
                current *= stride
    return plan


class Xception65(nn.Module):
    """Backbone: images [B,3,H,W] in [-1, 1] -> (features [B,2048,H/os,W/os], low-level [B,256,H/4,W/4])."""

    def __init__(self, output_stride: int):
        super().__init__()
        self.conv1_1 = ConvBN(3, 32, 3, BACKBONE_BN_EPS, stride=2)
        self.conv1_2 = ConvBN(32, 64, 3, BACKBONE_BN_EPS)
        plan = iter(unit_strides_and_rates(output_stride))
        in_channels = 64
        flows: dict[str, list[XceptionModule]] = {}
        for flow, _, units, depths, skip, _, relu_inside in _XCEPTION65_BLOCKS:
            for _ in range(units):
                stride, dilation = next(plan)
                flows.setdefault(flow, []).append(
                    XceptionModule(in_channels, depths, skip, stride, dilation, relu_inside)
                )
                in_channels = depths[-1]
        self.entry_flow = nn.ModuleList(flows["entry_flow"])
        self.middle_flow = nn.ModuleList(flows["middle_flow"])
        self.exit_flow = nn.ModuleList(flows["exit_flow"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1_2(self.conv1_1(x))
        low_level = x
        for index, module in enumerate(self.entry_flow):
            x, second = module(x)
            if index == 1:
                low_level = second
        for module in (*self.middle_flow, *self.exit_flow):
            x, _ = module(x)
        return x, low_level


class Decoder(nn.Module):
    """Low-level projection (48 ch) + two separable convs (256 ch) at stride 4."""

    def __init__(self):
        super().__init__()
        self.feature_projection0 = ConvBN(256, 48, 1, HEAD_BN_EPS)
        self.decoder_conv0 = SeparableConv(304, 256, HEAD_BN_EPS, relu=True)
        self.decoder_conv1 = SeparableConv(256, 256, HEAD_BN_EPS, relu=True)

    def forward(self, features: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.feature_projection0(low_level)
        features = F.interpolate(
            features, size=low_level.shape[-2:], mode="bilinear", align_corners=True
        )
        x = torch.cat([features, low_level], dim=1)
        return self.decoder_conv1(self.decoder_conv0(x))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ Xception-65: images [B,3,H,W] in [-1, 1] -> logits [B,C,~H/4,~W/4]."""

    def __init__(self, config: DeepLabConfig | None = None):
        super().__init__()
        self.config = config or DeepLabConfig()
        self.backbone = Xception65(self.config.output_stride)
        self.image_pooling = ConvBN(2048, 256, 1, HEAD_BN_EPS)
        self.aspp0 = ConvBN(2048, 256, 1, HEAD_BN_EPS)
        self.aspp1, self.aspp2, self.aspp3 = (
            SeparableConv(2048, 256, HEAD_BN_EPS, dilation=rate, relu=True)
            for rate in self.config.atrous_rates
        )
        self.concat_projection = ConvBN(1280, 256, 1, HEAD_BN_EPS)
        self.decoder = Decoder()
        self.logits = nn.Conv2d(256, self.config.num_classes, 1)
        self.logits.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, low_level = self.backbone(images)
        # Image-level feature: the export averages over the whole (padded) 513x513 map.
        pooled = self.image_pooling(features.mean(dim=(2, 3), keepdim=True))
        branches = [
            pooled.expand(-1, -1, *features.shape[-2:]),
            self.aspp0(features),
            self.aspp1(features),
            self.aspp2(features),
            self.aspp3(features),
        ]
        x = self.concat_projection(torch.cat(branches, dim=1))
        return self.logits(self.decoder(x, low_level))

    def predict_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Labels [B,H,W] int64: logits upsampled (align_corners) to the input size, argmax."""
        logits = self(images)
        logits = F.interpolate(
            logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=True
        )
        return logits.argmax(dim=1)


# --------------------------------------------------------------------------------------------
# Official names <-> our state dict

_KEY_RULES = (
    (r"^xception_65/entry_flow/conv1_(\d)/", r"backbone.conv1_\1/"),
    (
        r"^xception_65/(entry|exit)_flow/block(\d)/unit_1/xception_module/",
        r"backbone.\1_flow.<\2>/",
    ),
    (r"^xception_65/middle_flow/block1/unit_(\d+)/xception_module/", r"backbone.middle_flow.<\1>/"),
    (r"separable_conv(\d)_(depthwise|pointwise)/", r"sep\1.\2/"),
    (r"^decoder/", "decoder."),
    (r"(aspp\d|decoder_conv\d)_(depthwise|pointwise)/", r"\1.\2/"),
    (r"^logits/semantic/", "logits/"),
    (r"(depthwise_)?weights$", "weight"),
    (r"biases$", "bias"),
    (r"BatchNorm/gamma$", "bn.weight"),
    (r"BatchNorm/beta$", "bn.bias"),
    (r"BatchNorm/moving_mean$", "bn.running_mean"),
    (r"BatchNorm/moving_variance$", "bn.running_var"),
)


def state_dict_key(official_name: str) -> str:
    """Our state-dict key for an official variable (frozen-graph Const) name."""
    key = official_name
    for pattern, replacement in _KEY_RULES:
        key = re.sub(pattern, replacement, key)
    key = re.sub(r"<(\d+)>", lambda m: str(int(m.group(1)) - 1), key)
    return key.replace("/", ".")


def tf_to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    """TF layouts -> PyTorch: conv HWIO -> OIHW, depthwise [H,W,C,1] -> [C,1,H,W]."""
    if value.ndim != 4:
        return value
    if name.endswith("depthwise_weights"):
        return value.transpose(2, 3, 0, 1)
    return value.transpose(3, 2, 0, 1)


def is_model_variable(name: str) -> bool:
    """Whether a Const node name is one of the network's variables (not a shape/axis const)."""
    return name.startswith(
        ("xception_65/", "aspp", "image_pooling/", "concat_projection/", "decoder/", "logits/")
    ) and name.rsplit("/", 1)[-1] in {
        "weights",
        "depthwise_weights",
        "biases",
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    }


# --------------------------------------------------------------------------------------------
# Frozen GraphDef -> state dict (no TensorFlow needed)


def declared_shape(tensor) -> tuple[int, ...]:
    """The shape a TensorProto declares (header only; nothing is converted)."""
    return tuple(int(dim.size) for dim in tensor.tensor_shape.dim)


def tensor_proto_to_numpy(tensor, max_elements: int | None = None) -> np.ndarray:
    """Value of a TensorProto (`tensor_content` bytes or the repeated typed `*_val` fields).

    The declared shape is checked first (no negative dims, at most `max_elements` values,
    `tensor_content` exactly that many bytes): ValueError before anything is allocated, so
    a 63-byte Const declaring 250 M floats costs nothing."""
    dtypes = {
        types_pb2.DT_FLOAT: (np.float32, "float_val"),
        types_pb2.DT_DOUBLE: (np.float64, "double_val"),
        types_pb2.DT_HALF: (np.float16, "half_val"),
        types_pb2.DT_INT32: (np.int32, "int_val"),
        types_pb2.DT_INT64: (np.int64, "int64_val"),
    }
    if tensor.dtype not in dtypes:
        raise ValueError(f"unsupported tensor dtype {types_pb2.DataType.Name(tensor.dtype)}")
    dtype, field = dtypes[tensor.dtype]
    shape = declared_shape(tensor)
    if any(n < 0 for n in shape):
        raise ValueError(f"tensor shape {list(shape)} has an unknown dimension")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise ValueError(
            f"tensor shape {list(shape)} declares {count} values, more than {max_elements}"
        )
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * np.dtype(dtype).itemsize:
            raise ValueError(
                f"tensor_content holds {len(tensor.tensor_content)} bytes, shape "
                f"{list(shape)} needs {count * np.dtype(dtype).itemsize}"
            )
        return (
            np.frombuffer(tensor.tensor_content, dtype=np.dtype(dtype).newbyteorder("<"))
            .reshape(shape)
            .astype(dtype)
        )
    values = np.asarray(getattr(tensor, field))
    if tensor.dtype == types_pb2.DT_HALF:
        values = values.astype(np.uint16).view(np.float16)
    values = values.astype(dtype)
    if values.size > count:
        raise ValueError(f"{values.size} values for shape {list(shape)}")
    if values.size == 0:
        return np.zeros(shape, dtype)
    if values.size == count:
        return values.reshape(shape)
    # Repeated fields may be shortened: the last value fills the rest.
    return np.concatenate([values, np.full(count - values.size, values[-1], dtype)]).reshape(shape)


def _graph_limit() -> int:
    return env_limit("S4D_MAX_DEEPLAB_GRAPH_BYTES", MAX_GRAPH_BYTES)


def _graph_too_large(source: str, size: int, limit: int) -> CheckpointLimitError:
    return CheckpointLimitError(
        f"{source}: the frozen graph has {size} bytes, more than the limit of {limit} "
        "(S4D_MAX_DEEPLAB_GRAPH_BYTES)"
    )


def _read_graph_bytes(path: Path, source: str = "") -> bytes:
    """The frozen GraphDef bytes of a release tarball or of a bare .pb file; its size (tar
    member header or file size) is checked against the cap before it is read."""
    source = source or str(path)
    limit = _graph_limit()
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as archive:
                for member in archive:  # streamed: stops at the graph
                    base = member.name.rsplit("/", 1)[-1]
                    if not (member.isfile() and base.startswith(FROZEN_GRAPH_NAME)):
                        continue
                    if member.issparse():
                        raise CheckpointError(f"{source}: {member.name} is a sparse tar member")
                    if member.size > limit:
                        raise _graph_too_large(f"{source} member {member.name}", member.size, limit)
                    extracted = archive.extractfile(member)
                    return extracted.read() if extracted else b""
            raise CheckpointError(f"{source}: archive holds no {FROZEN_GRAPH_NAME}.pb")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise CheckpointError(f"{source}: unreadable archive: {type(e).__name__}: {e}") from e
    size = path.stat().st_size
    if size > limit:
        raise _graph_too_large(source, size, limit)
    return path.read_bytes()


def _parse_graph(data: bytes, source: str):
    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{source}: not a TensorFlow GraphDef ({error})") from error
    return graph


def _layer_stride_and_rate(nodes_by_name: dict, consts: dict, scope: str) -> tuple[int, int] | None:
    """(stride, dilation) of the depthwise conv under `scope`, read from the graph's ops.

    TF1 runs atrous depthwise convs as SpaceToBatchND(block_shape=rate) around a plain conv;
    newer graphs carry `dilations` on the op. None when the graph has no such op nodes.
    """
    prefix = scope + "/"
    stride, rate, found = 1, 1, False
    for name, node in nodes_by_name.items():
        if not name.startswith(prefix):
            continue
        if node.op == "DepthwiseConv2dNative":
            found = True
            stride = max(stride, int(node.attr["strides"].list.i[1]))
            if node.attr["dilations"].list.i:
                rate = max(rate, int(node.attr["dilations"].list.i[1]))
        elif node.op == "SpaceToBatchND" and len(node.input) > 1:
            block_name = node.input[1].split(":")[0]
            if block_name in consts:
                rate = max(rate, int(np.max(consts[block_name])))
    return (stride, rate) if found else None


def _infer_config(graph, consts: dict, num_classes: int) -> DeepLabConfig:
    """Output stride and ASPP rates the graph was exported with (release default: 8)."""
    nodes = {node.name: node for node in graph.node}
    exit_unit = _layer_stride_and_rate(
        nodes,
        consts,
        "xception_65/exit_flow/block1/unit_1/xception_module/separable_conv3_depthwise",
    )
    entry_unit = _layer_stride_and_rate(
        nodes,
        consts,
        "xception_65/entry_flow/block3/unit_1/xception_module/separable_conv3_depthwise",
    )
    if exit_unit is None or entry_unit is None:
        return DeepLabConfig(num_classes=num_classes)
    output_stride = 8 * entry_unit[0] * exit_unit[0]
    if output_stride not in ASPP_RATES:
        raise CheckpointError(f"unsupported output stride {output_stride} in the frozen graph")
    rates: list[int] = []
    for index, default in enumerate(ASPP_RATES[output_stride], 1):
        found = _layer_stride_and_rate(nodes, consts, f"aspp{index}_depthwise")
        rates.append(found[1] if found else default)
    return DeepLabConfig(output_stride, (rates[0], rates[1], rates[2]), num_classes)


def read_frozen_graph(uri: str) -> tuple[dict[str, torch.Tensor], DeepLabConfig]:
    """State dict (our keys, PyTorch layouts) and export config of an official frozen graph.

    Every variable's declared shape is checked against the Xception-65 network before any
    Const is converted (an unknown or mis-shaped one costs its header only)."""
    path = checkpoint_file(uri)
    graph = _parse_graph(_read_graph_bytes(path, uri), uri)
    expected = expected_official_shapes()
    variables_pb: dict[str, Any] = {}  # name -> TensorProto (tensorboard's protos are untyped)
    blocks_pb: dict[str, Any] = {}
    for node in graph.node:
        if node.op != "Const":
            continue
        if node.name in expected:
            variables_pb.setdefault(node.name, node.attr["value"].tensor)
        elif node.name.endswith("block_shape"):
            blocks_pb.setdefault(node.name, node.attr["value"].tensor)
    missing = sorted(set(expected) - set(variables_pb))
    if missing:
        raise CheckpointError(
            f"{uri}: not the DeepLabv3+ Xception-65 frozen graph: {len(missing)} of "
            f"{len(expected)} variables missing (e.g. {missing[0]!r})"
        )
    classes_shape = declared_shape(variables_pb["logits/semantic/biases"])
    if len(classes_shape) != 1 or not 1 <= classes_shape[0] <= MAX_CLASSES:
        raise CheckpointError(
            f"{uri}: logits/semantic/biases has shape {classes_shape}, expected "
            f"(classes,) with 1 to {MAX_CLASSES} classes"
        )
    num_classes = classes_shape[0]
    for name, shape in expected.items():
        if name.startswith("logits/"):
            shape = (*shape[:-1], num_classes)
        if declared_shape(variables_pb[name]) != tuple(shape):
            raise CheckpointError(
                f"{uri}: {name} has shape {declared_shape(variables_pb[name])}, "
                f"expected {tuple(shape)}"
            )
    try:
        variables = {
            name: tensor_proto_to_numpy(tensor, math.prod(declared_shape(tensor)))
            for name, tensor in variables_pb.items()
        }
        consts = {
            name: tensor_proto_to_numpy(tensor, MAX_BLOCK_SHAPE_VALUES)
            for name, tensor in blocks_pb.items()
        }
    except ValueError as e:
        raise CheckpointError(f"{uri}: a Const of the frozen graph is invalid: {e}") from e
    try:
        config = _infer_config(graph, {**consts, **variables}, num_classes)
    except CheckpointError:
        raise
    except (IndexError, ValueError) as e:
        raise CheckpointError(f"{uri}: cannot read the export options of the graph: {e}") from e
    state = {
        state_dict_key(name): torch.from_numpy(
            np.ascontiguousarray(tf_to_torch_layout(name, variables[name]), dtype=np.float32)
        )
        for name in expected
    }
    return state, config


def convert_frozen_graph(uri: str) -> dict[str, torch.Tensor]:
    """Our state dict from the official tarball (or its bare `frozen_inference_graph.pb`)."""
    return read_frozen_graph(uri)[0]


def save_converted(state: dict[str, torch.Tensor], config: DeepLabConfig, path: str) -> None:
    """Write a converted checkpoint as safetensors, the export config in its metadata."""
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "config": json.dumps(
            {
                "output_stride": config.output_stride,
                "atrous_rates": list(config.atrous_rates),
                "num_classes": config.num_classes,
            }
        ),
    }
    save_safetensors({k: v.contiguous() for k, v in state.items()}, path, metadata=metadata)


def _config_from_metadata(options: object) -> DeepLabConfig:
    """DeepLabConfig from the `config` metadata of a converted file, every value checked."""
    if not isinstance(options, dict):
        raise ValueError(f"config is a {type(options).__name__}, not an object")

    def integer(value: object, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{key} must be an integer in [{low}, {high}], got {value!r}")
        return value

    stride = options.get("output_stride")
    if stride not in ASPP_RATES:
        raise ValueError(f"output_stride must be one of {sorted(ASPP_RATES)}, got {stride!r}")
    rates = options.get("atrous_rates")
    if not isinstance(rates, list) or len(rates) != 3:
        raise ValueError(f"atrous_rates must be 3 integers, got {rates!r}")
    rate1, rate2, rate3 = (integer(r, "atrous_rates", 1, MAX_ATROUS_RATE) for r in rates)
    return DeepLabConfig(
        stride,
        (rate1, rate2, rate3),
        integer(options.get("num_classes"), "num_classes", 1, MAX_CLASSES),
    )


def _read_safetensors(path: Path, uri: str) -> tuple[dict[str, torch.Tensor], DeepLabConfig]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{uri}: not a readable safetensors file: {e}") from e
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{uri}: safetensors file is not a converted DeepLab checkpoint")
    if "config" not in metadata:
        raise CheckpointError(f"{uri}: converted DeepLab checkpoint has no config metadata")
    try:
        config = _config_from_metadata(json.loads(metadata["config"]))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{uri}: invalid DeepLab config metadata: {e}") from e
    try:
        return load_safetensors(str(path)), config
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{uri}: not a readable safetensors file: {e}") from e


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_length < path.stat().st_size


def load_deeplab(uri: str = DEFAULT_URI, device: str | torch.device = "cpu") -> DeepLabV3Plus:
    """DeepLabv3+ from the release tarball, its frozen `.pb`, or a converted safetensors file."""
    path = checkpoint_file(uri)
    if _is_safetensors(path):
        state, config = _read_safetensors(path, uri)
    else:
        state, config = read_frozen_graph(uri)
    with torch.device("meta"):
        model = DeepLabV3Plus(config)
    expected = model.state_dict()
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))
        raise CheckpointError(f"{uri}: state dict does not match the model (missing {missing[:3]})")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{uri}: {key} has shape {tuple(value.shape)}")
    model.load_state_dict(state, assign=True)
    return model.eval().to(device)


def expected_official_shapes(num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    """Official variable names -> TF shapes, derived from the reference model definition."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(scope: str, shape: tuple[int, ...], batch_norm: bool = True) -> None:
        shapes[f"{scope}/weights"] = shape
        if batch_norm:
            for stat in ("gamma", "beta", "moving_mean", "moving_variance"):
                shapes[f"{scope}/BatchNorm/{stat}"] = (shape[-1],)

    def separable(scope: str, in_channels: int, out_channels: int) -> None:
        shapes[f"{scope}_depthwise/depthwise_weights"] = (3, 3, in_channels, 1)
        for stat in ("gamma", "beta", "moving_mean", "moving_variance"):
            shapes[f"{scope}_depthwise/BatchNorm/{stat}"] = (in_channels,)
        conv(f"{scope}_pointwise", (1, 1, in_channels, out_channels))

    conv("xception_65/entry_flow/conv1_1", (3, 3, 3, 32))
    conv("xception_65/entry_flow/conv1_2", (3, 3, 32, 64))
    in_channels = 64
    for flow, block, units, depths, skip, _, _ in _XCEPTION65_BLOCKS:
        for unit in range(1, units + 1):
            scope = f"xception_65/{flow}/block{block}/unit_{unit}/xception_module"
            channels = (in_channels, *depths)
            for i in range(3):
                separable(f"{scope}/separable_conv{i + 1}", channels[i], channels[i + 1])
            if skip == "conv":
                conv(f"{scope}/shortcut", (1, 1, in_channels, depths[-1]))
            in_channels = depths[-1]
    conv("image_pooling", (1, 1, 2048, 256))
    conv("aspp0", (1, 1, 2048, 256))
    for index in (1, 2, 3):
        separable(f"aspp{index}", 2048, 256)
    conv("concat_projection", (1, 1, 1280, 256))
    conv("decoder/feature_projection0", (1, 1, 256, 48))
    separable("decoder/decoder_conv0", 304, 256)
    separable("decoder/decoder_conv1", 256, 256)
    conv("logits/semantic", (1, 1, 256, num_classes), batch_norm=False)
    shapes["logits/semantic/biases"] = (num_classes,)
    return shapes


# --------------------------------------------------------------------------------------------
# Pre- and post-processing as the Stereo4D call of the exported graph


def model_input_size(height: int, width: int, input_size: int = INPUT_SIZE) -> tuple[int, int]:
    """(h, w) the frame is resized to: scaled by min(S/H, S/W), truncated as Stereo4D does."""
    ratio = min(input_size / height, input_size / width)
    return int(ratio * height), int(ratio * width)


def resize_frame(frame: np.ndarray, input_size: int = INPUT_SIZE) -> np.ndarray:
    """Frame [H,W,3] uint8 -> [h,w,3] uint8 fitting in input_size², PIL LANCZOS (Stereo4D)."""
    height, width = frame.shape[:2]
    size_hw = model_input_size(height, width, input_size)
    if size_hw == (height, width):
        return frame
    resized = Image.fromarray(frame).resize((size_hw[1], size_hw[0]), Image.Resampling.LANCZOS)
    return np.asarray(resized)


def pad_and_normalize(frames: list[np.ndarray], input_size: int = INPUT_SIZE) -> torch.Tensor:
    """Resized frames [h,w,3] uint8 -> [B,3,S,S] float: pad bottom/right with 127.5, ×2/255 − 1."""
    batch = np.full((len(frames), input_size, input_size, 3), MEAN_PIXEL, np.float32)
    for index, frame in enumerate(frames):
        batch[index, : frame.shape[0], : frame.shape[1]] = frame
    batch = batch * (2.0 / 255.0) - 1.0
    return torch.from_numpy(batch).permute(0, 3, 1, 2)


def restore_labels(
    labels: np.ndarray, resized_hw: tuple[int, int], frame_hw: tuple[int, int]
) -> np.ndarray:
    """Padded labels [S,S] -> frame labels [H,W] uint8: crop, nearest resize (cv2, as Stereo4D)."""
    cropped = np.ascontiguousarray(labels[: resized_hw[0], : resized_hw[1]].astype(np.uint8))
    if resized_hw == tuple(frame_hw):
        return cropped
    return cv2.resize(cropped, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_NEAREST)


def _batches(count: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


@torch.inference_mode()
def segment_frames(
    model: DeepLabV3Plus,
    frames: np.ndarray,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    input_size: int = INPUT_SIZE,
) -> np.ndarray:
    """ADE20K labels [T,H,W] uint8 (0 = background) of frames [T,H,W,3] uint8 RGB.

    `autocast_dtype` (bf16/fp16) runs the network under autocast on the model's device; fp32
    otherwise, with TF32 off so CUDA results stay close to the TF reference.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T,H,W,3] uint8, got {frames.shape} {frames.dtype}")
    device = next(model.parameters()).device
    frame_hw = frames.shape[1:3]
    labels = np.zeros(frames.shape[:3], np.uint8)
    for batch in _batches(len(frames), batch_size):
        resized = [resize_frame(frame, input_size) for frame in frames[batch]]
        images = pad_and_normalize(resized, input_size).to(device)
        with (
            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
            torch.backends.cudnn.flags(
                enabled=True,
                benchmark=torch.backends.cudnn.benchmark,
                deterministic=torch.backends.cudnn.deterministic,
                allow_tf32=autocast_dtype is not None,
            ),
        ):
            predicted = model.predict_labels(images).to(torch.uint8).cpu().numpy()
        for offset, (image, label) in enumerate(zip(resized, predicted, strict=True)):
            labels[batch.start + offset] = restore_labels(label, image.shape[:2], frame_hw)
    return labels
