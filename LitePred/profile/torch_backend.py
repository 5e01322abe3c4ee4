"""Eager PyTorch CPU backend for LitePred's profiling (NSDI'24 §5: one more platform of the pool).

``torch-fp32``: the module runs eagerly in eval mode under ``torch.inference_mode`` with
``torch.set_num_threads(threads)`` while timing; the previous thread count and each submodule's
train/eval mode are restored afterwards (both done by the common ``"torch"`` runner).
``torch-fp32-2t`` is the two-thread variant. The per-call overhead model is a one-element Add
module called the same way. This backend runs torch modules only, not ``.onnx`` files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from moonlit.common.profiling.backends import Runner, make_runner
from moonlit.litepred.profile.base import Backend, fixed_threads, register_platform
from moonlit.litepred.profile.protocol import Measurement

__all__ = ["TorchBackend"]


class _TinyAdd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class TorchBackend(Backend):
    """Eager torch on the CPU (FP32)."""

    runtime = "torch"
    precision = "fp32"
    optimization_level = "eager"

    def _runtime_version(self) -> str:
        return torch.__version__

    def _overhead_key(self) -> tuple[Any, ...]:
        return (self.runtime, self.threads)

    def _overhead_runner(self) -> Runner:
        return make_runner("torch", _TinyAdd(), torch.zeros(1), threads=self.threads)

    def measure(self, model: nn.Module, example_inputs: Any) -> Measurement:
        if not isinstance(model, nn.Module):
            raise ValueError(f"backend {self.name!r} measures nn.Modules, got {type(model).__name__}")
        return self._time(make_runner("torch", model, example_inputs, threads=self.threads))

    def prepare_runner(self, model: nn.Module, example_inputs: Any, workdir: Path, *, kernel: bool = False) -> Runner:
        if not isinstance(model, nn.Module):
            raise ValueError(f"backend {self.name!r} measures nn.Modules, got {type(model).__name__}")
        return make_runner("torch", model, example_inputs, threads=self.threads)

    def measure_onnx(self, path: str | Path, inputs: Any = None) -> Measurement:
        raise NotImplementedError(
            f"backend {self.name!r} runs torch modules only and cannot run the ONNX file {path}; "
            "call measure(module, example_inputs) or use an ort-* backend"
        )


@register_platform("torch-fp32")
def torch_fp32(**options: Any) -> TorchBackend:
    """Eager torch, FP32, 1 thread unless ``threads`` is given."""
    return TorchBackend("torch-fp32", **options)


@register_platform("torch-fp32-2t")
def torch_fp32_2t(**options: Any) -> TorchBackend:
    """``torch-fp32`` with two intra-op threads."""
    return TorchBackend("torch-fp32", **fixed_threads("torch-fp32-2t", 2, options))
