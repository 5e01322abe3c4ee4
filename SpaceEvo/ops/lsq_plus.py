"""LSQ+ fake quantization for SpaceEvo's quantization-aware supernets (SpaceEvo §3.3, §4.1).

SpaceEvo trains its supernets and block-wise KD students with LSQ+ (Bhalgat et al., CVPR-W 2020,
arXiv 2004.09576), itself an extension of LSQ (Esser et al., ICLR 2020, arXiv 1902.08153):

* activations, asymmetric unsigned: ``x_hat = round(clamp((x - beta) / s, 0, 2^b - 1)) * s + beta``
  with a learnable scale ``s`` and offset ``beta``;
* weights, symmetric signed per tensor: ``w_hat = round(clamp(w / s, -2^(b-1), 2^(b-1) - 1)) * s``;
* ``round`` passes gradients straight through; the gradients of ``s`` and ``beta`` are multiplied
  by ``1 / sqrt(N * Q_p)`` (LSQ §2.2), N = features per sample (activations) or weight count;
* min-max initialisation on the first quantized forward.

Modules start in FP32 mode (quantizers pass tensors through); :func:`set_quant_mode` switches
every quantizer of a model to b bits. The learned grids are retrievable in onnxruntime's
QuantizeLinear convention with :func:`export_quant_params` (uint8 + zero point for activations,
int8 with zero point 0 for weights), so a later export can build a QDQ model from the scales the
accuracy was measured with — the reference never exported them (it re-calibrated on random data).

The reference initialised the weight scale with ``max(2 * (max|w|, eps)) / 255``: ``2 * (a, b)``
is tuple repetition, so the scale came out as ``max|w| / 255`` and half the int8 range clipped
(4.3% of the weights of a trained layer). Here ``s_w = max|w| / (2^(b-1) - 1)``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_BITS",
    "REFERENCE_KEY_SUFFIXES",
    "ActivationQuantizer",
    "WeightQuantizer",
    "QuantParams",
    "QuantConv2d",
    "QuantLinear",
    "set_quant_mode",
    "export_quant_params",
]

DEFAULT_BITS = 8
# Keeps a learned scale away from zero (the reference clamps in place to 1e-7 / (2^b - 1)).
_MIN_SCALE = 1e-10

# Where the reference's QBase parameters (attributes of each conv/linear) live in ours: a key
# ``<prefix>.sa`` of a released checkpoint is ``<prefix>.act_quant.scale`` here. Our quantizers
# also carry an ``initialized`` buffer; set it to True when loading calibrated released scales.
REFERENCE_KEY_SUFFIXES = {"sa": "act_quant.scale", "beta": "act_quant.offset", "sw": "weight_quant.scale"}


def _round_straight_through(value: Tensor) -> Tensor:
    return value + (value.round() - value).detach()


def _scale_gradient(value: Tensor, factor: float) -> Tensor:
    """Identity in the forward pass, gradient multiplied by ``factor`` in the backward pass."""
    scaled = value * factor
    return scaled + (value - scaled).detach()


def _validate_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits={bits!r} is not a supported bit width; expected an int in [2, 16]")
    return bits


def _sync_mean_(value: Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, dist.ReduceOp.SUM)
        value /= dist.get_world_size()


def _check_exportable(quantizer: nn.Module) -> None:
    # bits None means the model was switched back to FP32 after 8-bit training: still exportable.
    if quantizer.bits not in (None, 8):
        raise ValueError(f"only 8-bit quantizers export to uint8/int8, this one has bits={quantizer.bits}")


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """One quantizer's grid in onnxruntime's convention: ``q = saturate(round(x / scale) + zero_point)``.

    ``offset_residual`` is ``beta + zero_point * scale`` for an activation quantizer: zero when the
    learned offset lies on the exportable grid (see :meth:`ActivationQuantizer.snap_offset_to_grid_`).
    """

    scale: float
    zero_point: int
    dtype: str  # "uint8" or "int8"
    offset_residual: float = 0.0


class _LsqQuantizer(nn.Module):
    """Shared state: ``bits`` (None = FP32 pass-through) and the persistent ``initialized`` flag."""

    def __init__(self, bits: int | None = None) -> None:
        super().__init__()
        self.bits = None if bits is None else _validate_bits(bits)
        self.scale = nn.Parameter(torch.ones(1))
        # A buffer (not a Python flag) so that a loaded checkpoint is not re-initialised.
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def enabled(self) -> bool:
        return self.bits is not None

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    def _positive_scale(self, grad_factor: float) -> Tensor:
        return _scale_gradient(self.scale, grad_factor).abs().clamp_min(_MIN_SCALE)

    def copy_state_(self, other: _LsqQuantizer) -> None:
        """Take ``other``'s bits, parameters and flag (used when extracting static subnets)."""
        self.bits = other.bits
        self.load_state_dict(other.state_dict())


class ActivationQuantizer(_LsqQuantizer):
    """LSQ+ asymmetric activation quantizer with learnable scale and offset (``beta``)."""

    def __init__(self, bits: int | None = None) -> None:
        super().__init__(bits)
        self.offset = nn.Parameter(torch.zeros(1))

    @property
    def levels(self) -> tuple[int, int]:
        return 0, 2 ** self.bits - 1

    @torch.no_grad()
    def initialize_(self, x: Tensor) -> None:
        """Min-max init: the grid spans ``[min x, max x]``, i.e. s = (max - min) / Q_p, beta = min."""
        _, q_max = self.levels
        x_min, x_max = x.detach().min(), x.detach().max()
        self.scale.copy_(torch.clamp(x_max - x_min, min=_MIN_SCALE * q_max).reshape(1) / q_max)
        self.offset.copy_(x_min.reshape(1))
        _sync_mean_(self.scale.data)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.offset.data, dist.ReduceOp.MIN)
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if self.bits is None:
            return x
        if not bool(self.initialized):
            self.initialize_(x)
        q_min, q_max = self.levels
        features_per_sample = x.numel() // max(x.shape[0], 1) if x.dim() > 1 else x.numel()
        grad_factor = 1.0 / math.sqrt(features_per_sample * q_max)
        scale = self._positive_scale(grad_factor)
        offset = _scale_gradient(self.offset, grad_factor)
        levels = torch.clamp((x - offset) / scale, q_min, q_max)
        return _round_straight_through(levels) * scale + offset

    def export_params(self) -> QuantParams:
        """(scale, zero point) as uint8 QuantizeLinear: zero_point = round(-beta / s) in [0, 2^b - 1]."""
        _check_exportable(self)
        scale = float(self.scale.detach().abs().clamp_min(_MIN_SCALE))
        offset = float(self.offset.detach())
        zero_point = int(min(max(round(-offset / scale), 0), 255))
        return QuantParams(scale, zero_point, "uint8", offset + zero_point * scale)

    @torch.no_grad()
    def snap_offset_to_grid_(self) -> None:
        """Move beta to ``-zero_point * s`` so that the exported grid equals the trained one exactly."""
        params = self.export_params()
        self.offset.fill_(-params.zero_point * params.scale)


class WeightQuantizer(_LsqQuantizer):
    """LSQ+ symmetric per-tensor weight quantizer with a learnable scale."""

    @property
    def levels(self) -> tuple[int, int]:
        return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1

    @torch.no_grad()
    def initialize_(self, weight: Tensor) -> None:
        """s = max|w| / Q_p: the largest weight lands on level +-Q_p, so no weight clips.

        (Q_p = 127 for int8; -max|w| maps to -127 >= Q_n = -128.)
        """
        _, q_max = self.levels
        largest = weight.detach().abs().max()
        self.scale.copy_(torch.clamp(largest, min=_MIN_SCALE * q_max).reshape(1) / q_max)
        _sync_mean_(self.scale.data)
        self.initialized.fill_(True)

    def forward(self, weight: Tensor) -> Tensor:
        if self.bits is None:
            return weight
        if not bool(self.initialized):
            self.initialize_(weight)
        q_min, q_max = self.levels
        scale = self._positive_scale(1.0 / math.sqrt(weight.numel() * q_max))
        levels = torch.clamp(weight / scale, q_min, q_max)
        return _round_straight_through(levels) * scale

    def export_params(self) -> QuantParams:
        _check_exportable(self)
        return QuantParams(float(self.scale.detach().abs().clamp_min(_MIN_SCALE)), 0, "int8")


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input and weight pass through LSQ+ quantizers (FP32 until switched)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.act_quant = ActivationQuantizer()
        self.weight_quant = WeightQuantizer()

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose input and weight pass through LSQ+ quantizers (FP32 until switched)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.act_quant = ActivationQuantizer()
        self.weight_quant = WeightQuantizer()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)


def set_quant_mode(model: nn.Module, bits: int | bool | None = DEFAULT_BITS) -> int:
    """Set every LSQ+ quantizer in ``model`` to ``bits`` (True = 8; None, False or 32 = FP32).

    Returns the number of quantizers switched (0 means the model has none — likely a mistake).
    """
    if bits is True:
        bits = DEFAULT_BITS
    elif bits is False or bits == 32:
        bits = None
    if bits is not None:
        _validate_bits(bits)
    count = 0
    for module in model.modules():
        if isinstance(module, _LsqQuantizer):
            module.bits = bits
            count += 1
    return count


def export_quant_params(model: nn.Module, initialized_only: bool = True) -> dict[str, QuantParams]:
    """Every 8-bit quantizer's grid in ORT's convention, keyed by the quantizer's module name.

    Names end in ``.act_quant`` (the quantized op's input, uint8) or ``.weight_quant`` (int8).
    Quantizers that never ran (``initialized`` False) are skipped unless ``initialized_only`` is
    False; their scale is still the placeholder 1.0 then.
    """
    params = {}
    for name, module in model.named_modules():
        if isinstance(module, _LsqQuantizer) and (bool(module.initialized) or not initialized_only):
            params[name] = module.export_params()
    return params
