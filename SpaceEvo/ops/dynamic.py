"""Elastic (weight-sharing) ops of SpaceEvo's supernets, LSQ+-quantizable (SpaceEvo §3.3, §4.1).

The once-for-all contract (:class:`moonlit.common.nn.elastic.ElasticModule`): each op holds its
weights at the largest size, reads its active choice (output channels, kernel size, SE middle width)
from ``active_*`` attributes set by ``set_active``, slices in ``forward``, and
``get_active_subnet(in_channels)`` returns a plain static module (``QuantConv2d``,
``nn.BatchNorm2d``, ...) with copies of the active slices whose output equals the op's.

Slicing follows the reference: channels are the leading ones, a smaller kernel is the centre of
the largest (no OFA kernel-transform matrices), and input channels are read from the input.
Every conv / linear carries LSQ+ quantizers (``act_quant``, ``weight_quant``); in quant mode the
quantizers see the *active* slice, and the extracted static op receives their parameters, so
the static op equals the supernet op in FP32 and in quantized mode alike.

Stacked depthwise (mobilew block types 5, 6): a kernel-5 depthwise conv is built as two 3x3
depthwise convs and kernel 7 as three; kernel k uses the first (k - 1) / 2 convs of one shared
stack (``0``, ``1``, ``2``), the first strided, one BatchNorm after the stack.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moonlit.common.nn.elastic import ElasticBatchNorm2d, ElasticModule, check_width
from moonlit.spaceevo.ops.lsq_plus import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    WeightQuantizer,
)

__all__ = [
    "ACTIVATIONS",
    "make_activation",
    "make_divisible",
    "DynamicConv2d",
    "DynamicDepthwiseConv2d",
    "DynamicStackedDepthwiseConv2d",
    "DynamicLinear",
    "DynamicConvBnAct",
    "DynamicSqueezeExcite",
    "SqueezeExcite",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU, "hswish": nn.Hardswish,
}


def make_activation(name: str | None) -> nn.Module | None:
    if name is None or name == "none":
        return None
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)} or 'none'")
    return ACTIVATIONS[name]()


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``, default the
    divisor), rounding up when rounding to nearest would lose more than 10%.

    The MobileNetV2 rule (Sandler et al. 2018, TF-slim ``_make_divisible``), used by the
    reference for every hidden and SE width.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _check_kernel_list(kernel_list: Sequence[int], what: str) -> tuple[int, ...]:
    kernels = tuple(int(k) for k in kernel_list)
    if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
        raise ValueError(f"kernel list {list(kernel_list)} of {what} must be non-empty odd sizes")
    return kernels


def _set_kernel(op: nn.Module, kernel_size: int | None) -> None:
    if kernel_size is None:
        return
    if kernel_size not in op.kernel_list:
        raise ValueError(f"kernel {kernel_size} is not among this conv's kernels {list(op.kernel_list)}")
    op.active_kernel_size = kernel_size


def _centre(max_kernel: int, kernel: int) -> slice:
    start = (max_kernel - kernel) // 2
    return slice(start, start + kernel)


class _DynamicQuantOp(ElasticModule):
    """Weight at max size + LSQ+ quantizers; the base of the dynamic conv and linear ops."""

    def __init__(self, weight_shape: Sequence[int], bias_size: int | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*weight_shape))
        self.bias = nn.Parameter(torch.empty(bias_size)) if bias_size is not None else None
        # nn.Conv2d / nn.Linear's default initialisation (kaiming-uniform with a = sqrt(5)).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        self.act_quant = ActivationQuantizer()
        self.weight_quant = WeightQuantizer()

    def _copy_into(self, static: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
        with torch.no_grad():
            static.weight.copy_(weight)
            if bias is not None:
                static.bias.copy_(bias)
        static.act_quant.copy_state_(self.act_quant)
        static.weight_quant.copy_state_(self.weight_quant)
        return static


class DynamicConv2d(_DynamicQuantOp):
    """Dense conv with elastic output channels and kernel size ('same' padding)."""

    active_choices = ("out_channels", "kernel_size")

    def __init__(self, max_in_channels: int, max_out_channels: int, kernel_list: Sequence[int] = (1,),
                 stride: int = 1, bias: bool = False) -> None:
        self.kernel_list = _check_kernel_list(kernel_list, "DynamicConv2d")
        super().__init__((max_out_channels, max_in_channels, max(self.kernel_list), max(self.kernel_list)),
                         max_out_channels if bias else None)
        self.max_in_channels, self.max_out_channels = max_in_channels, max_out_channels
        self.stride = stride
        self.active_out_channels = max_out_channels
        self.active_kernel_size = max(self.kernel_list)

    def set_active(self, *, out_channels: int | None = None, kernel_size: int | None = None) -> None:
        if out_channels is not None:
            check_width(out_channels, self.max_out_channels, "DynamicConv2d output")
        if kernel_size is not None and kernel_size not in self.kernel_list:
            raise ValueError(f"kernel {kernel_size} is not among this conv's kernels {list(self.kernel_list)}")
        if out_channels is not None:
            self.active_out_channels = out_channels
        if kernel_size is not None:
            self.active_kernel_size = kernel_size

    def active_weight(self, in_channels: int) -> tuple[Tensor, Tensor | None]:
        out_channels = self.active_out_channels
        check_width(in_channels, self.max_in_channels, "DynamicConv2d input")
        check_width(out_channels, self.max_out_channels, "DynamicConv2d output")
        window = _centre(max(self.kernel_list), self.active_kernel_size)
        weight = self.weight[:out_channels, :in_channels, window, window]
        return weight, None if self.bias is None else self.bias[:out_channels]

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.active_weight(x.shape[1])
        return F.conv2d(self.act_quant(x), self.weight_quant(weight.contiguous()), bias, self.stride,
                        self.active_kernel_size // 2)

    def get_active_subnet(self, in_channels: int | None = None) -> QuantConv2d:
        in_channels = self.max_in_channels if in_channels is None else in_channels
        weight, bias = self.active_weight(in_channels)
        static = QuantConv2d(in_channels, weight.shape[0], self.active_kernel_size, self.stride,
                             self.active_kernel_size // 2, bias=bias is not None)
        return self._copy_into(static, weight, bias)


class DynamicDepthwiseConv2d(_DynamicQuantOp):
    """Depthwise conv: channels follow the input, the kernel is the centre of the largest."""

    active_choices = ("kernel_size",)

    def __init__(self, max_channels: int, kernel_list: Sequence[int], stride: int = 1, bias: bool = False) -> None:
        self.kernel_list = _check_kernel_list(kernel_list, "DynamicDepthwiseConv2d")
        super().__init__((max_channels, 1, max(self.kernel_list), max(self.kernel_list)),
                         max_channels if bias else None)
        self.max_channels = max_channels
        self.stride = stride
        self.active_kernel_size = max(self.kernel_list)

    def set_active(self, *, kernel_size: int | None = None) -> None:
        _set_kernel(self, kernel_size)

    def active_weight(self, channels: int) -> tuple[Tensor, Tensor | None]:
        check_width(channels, self.max_channels, "DynamicDepthwiseConv2d")
        window = _centre(max(self.kernel_list), self.active_kernel_size)
        weight = self.weight[:channels, :, window, window]
        return weight, None if self.bias is None else self.bias[:channels]

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        weight, bias = self.active_weight(channels)
        return F.conv2d(self.act_quant(x), self.weight_quant(weight.contiguous()), bias, self.stride,
                        self.active_kernel_size // 2, 1, channels)

    def get_active_subnet(self, in_channels: int | None = None) -> QuantConv2d:
        in_channels = self.max_channels if in_channels is None else in_channels
        weight, bias = self.active_weight(in_channels)
        static = QuantConv2d(in_channels, in_channels, self.active_kernel_size, self.stride,
                             self.active_kernel_size // 2, groups=in_channels, bias=bias is not None)
        return self._copy_into(static, weight, bias)


class DynamicStackedDepthwiseConv2d(ElasticModule):
    """Kernel k as (k - 1) / 2 stacked 3x3 depthwise convs sharing one stack (children ``0``, ``1``, ...)."""

    active_choices = ("kernel_size",)

    def __init__(self, max_channels: int, kernel_list: Sequence[int], stride: int = 1) -> None:
        super().__init__()
        self.kernel_list = _check_kernel_list(kernel_list, "DynamicStackedDepthwiseConv2d")
        if min(self.kernel_list) < 3:
            raise ValueError(f"stacked 3x3 depthwise needs kernels >= 3, got {list(kernel_list)}")
        self.max_channels = max_channels
        for index in range(self.num_convs(max(self.kernel_list))):
            self.add_module(str(index), DynamicDepthwiseConv2d(max_channels, [3], stride if index == 0 else 1))
        self.active_kernel_size = max(self.kernel_list)

    @staticmethod
    def num_convs(kernel_size: int) -> int:
        # Receptive field of n stacked 3x3 convs is 2n + 1.
        return (kernel_size - 1) // 2

    def set_active(self, *, kernel_size: int | None = None) -> None:
        _set_kernel(self, kernel_size)

    def active_convs(self) -> list[DynamicDepthwiseConv2d]:
        return [self.get_submodule(str(i)) for i in range(self.num_convs(self.active_kernel_size))]

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.active_convs():
            x = conv(x)
        return x

    def get_active_subnet(self, in_channels: int | None = None) -> nn.Sequential:
        in_channels = self.max_channels if in_channels is None else in_channels
        return nn.Sequential(*(conv.get_active_subnet(in_channels) for conv in self.active_convs()))


class DynamicLinear(_DynamicQuantOp):
    """Linear with elastic output features (``active_out_channels``); input features follow the input."""

    active_choices = ("out_channels",)

    def __init__(self, max_in_features: int, max_out_features: int, bias: bool = True) -> None:
        super().__init__((max_out_features, max_in_features), max_out_features if bias else None)
        self.max_in_features, self.max_out_features = max_in_features, max_out_features
        self.active_out_channels = max_out_features

    def set_active(self, *, out_channels: int | None = None) -> None:
        if out_channels is not None:
            check_width(out_channels, self.max_out_features, "DynamicLinear output")
            self.active_out_channels = out_channels

    def active_weight(self, in_features: int) -> tuple[Tensor, Tensor | None]:
        check_width(in_features, self.max_in_features, "DynamicLinear input")
        weight = self.weight[:self.active_out_channels, :in_features]
        return weight, None if self.bias is None else self.bias[:self.active_out_channels]

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.active_weight(x.shape[-1])
        return F.linear(self.act_quant(x), self.weight_quant(weight.contiguous()), bias)

    def get_active_subnet(self, in_channels: int | None = None) -> QuantLinear:
        in_features = self.max_in_features if in_channels is None else in_channels
        weight, bias = self.active_weight(in_features)
        static = QuantLinear(in_features, weight.shape[0], bias=bias is not None)
        return self._copy_into(static, weight, bias)


ConvOp = DynamicConv2d | DynamicDepthwiseConv2d | DynamicStackedDepthwiseConv2d


class DynamicConvBnAct(ElasticModule):
    """conv -> BN -> activation; the conv is ``conv`` (dense) or ``dwconv`` (depthwise), as in the reference.

    A dense conv has ``active_out_channels`` and ``active_kernel_size``; a depthwise one keeps its
    input channels and has only ``active_kernel_size``.
    """

    def __init__(self, conv: ConvOp, max_out_channels: int, activation: str | None) -> None:
        super().__init__()
        self.conv_name = "conv" if isinstance(conv, DynamicConv2d) else "dwconv"
        self.active_choices = conv.active_choices
        self.add_module(self.conv_name, conv)
        self.norm = ElasticBatchNorm2d(max_out_channels)
        self.activation = activation
        act = make_activation(activation)
        if act is not None:
            self.act = act

    @classmethod
    def pointwise(cls, max_in: int, max_out: int, activation: str | None, stride: int = 1) -> DynamicConvBnAct:
        return cls(DynamicConv2d(max_in, max_out, [1], stride), max_out, activation)

    @classmethod
    def dense(cls, max_in: int, max_out: int, kernel_list: Sequence[int], stride: int,
              activation: str | None) -> DynamicConvBnAct:
        return cls(DynamicConv2d(max_in, max_out, kernel_list, stride), max_out, activation)

    @classmethod
    def depthwise(cls, max_channels: int, kernel_list: Sequence[int], stride: int, activation: str | None,
                  stacked: bool = False) -> DynamicConvBnAct:
        conv_class = DynamicStackedDepthwiseConv2d if stacked else DynamicDepthwiseConv2d
        return cls(conv_class(max_channels, kernel_list, stride), max_channels, activation)

    @property
    def op(self) -> ConvOp:
        return self.get_submodule(self.conv_name)

    @property
    def active_out_channels(self) -> int:
        if not isinstance(self.op, DynamicConv2d):
            raise AttributeError("a depthwise conv has no active output width: it keeps its input channels")
        return self.op.active_out_channels

    @property
    def active_kernel_size(self) -> int:
        return self.op.active_kernel_size

    def set_active(self, *, out_channels: int | None = None, kernel_size: int | None = None) -> None:
        if isinstance(self.op, DynamicConv2d):
            self.op.set_active(out_channels=out_channels, kernel_size=kernel_size)
        elif out_channels is not None:
            raise ValueError(f"a depthwise conv keeps its input channels; out_channels={out_channels} was given")
        else:
            self.op.set_active(kernel_size=kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.op(x))
        return self.act(x) if hasattr(self, "act") else x

    def get_active_subnet(self, in_channels: int | None = None) -> nn.Sequential:
        if isinstance(self.op, DynamicConv2d):
            in_channels = self.op.max_in_channels if in_channels is None else in_channels
            conv = self.op.get_active_subnet(in_channels)
            channels = conv.out_channels
        else:
            channels = self.op.max_channels if in_channels is None else in_channels
            conv = self.op.get_active_subnet(channels)
        layers = [(self.conv_name, conv), ("norm", self.norm.get_active_subnet(channels))]
        if hasattr(self, "act"):
            layers.append(("act", make_activation(self.activation)))
        return nn.Sequential(OrderedDict(layers))


class SqueezeExcite(nn.Module):
    """Static SE: ``x * hardsigmoid(expand(relu(reduce(mean_hw x))))`` with quantizable 1x1 convs."""

    def __init__(self, channels: int, mid_channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", QuantConv2d(channels, mid_channels, 1, bias=True)),
            ("relu", nn.ReLU()),
            ("expand", QuantConv2d(mid_channels, channels, 1, bias=True)),
            ("hsigmoid", nn.Hardsigmoid()),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class DynamicSqueezeExcite(ElasticModule):
    """Elastic SE: channels follow the input, the middle width is ``active_mid_channels``, set by the owning block.

    MobileNetV3 blocks use ``make_divisible(hidden // 4)``; ResNetSE and FusedMBConvSE use
    ``make_divisible(block_input // 4)`` on the hidden channels (the reference's RegNet-style rule).
    """

    active_choices = ("mid_channels",)

    def __init__(self, max_channels: int, max_mid_channels: int) -> None:
        super().__init__()
        self.max_channels, self.max_mid_channels = max_channels, max_mid_channels
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", DynamicConv2d(max_channels, max_mid_channels, [1], bias=True)),
            ("relu", nn.ReLU()),
            ("expand", DynamicConv2d(max_mid_channels, max_channels, [1], bias=True)),
            ("hsigmoid", nn.Hardsigmoid()),
        ]))

    @property
    def active_mid_channels(self) -> int:
        return self.fc.reduce.active_out_channels

    def set_active(self, *, mid_channels: int | None = None) -> None:
        self.fc.reduce.set_active(out_channels=mid_channels)

    def forward(self, x: Tensor) -> Tensor:
        self.fc.expand.set_active(out_channels=x.shape[1])  # the gate has the input's channels
        gate = self.fc.reduce(x.mean((2, 3), keepdim=True))
        gate = self.fc.expand(self.fc.relu(gate))
        return x * self.fc.hsigmoid(gate)

    def get_active_subnet(self, in_channels: int | None = None) -> SqueezeExcite:
        channels = self.max_channels if in_channels is None else in_channels
        mid_channels = self.active_mid_channels
        static = SqueezeExcite(channels, mid_channels)
        static.fc.reduce = self.fc.reduce.get_active_subnet(channels)
        self.fc.expand.set_active(out_channels=channels)
        static.fc.expand = self.fc.expand.get_active_subnet(mid_channels)
        return static
