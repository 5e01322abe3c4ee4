"""OpenVINO CPU backends for LitePred's profiling (NSDI'24, §5: three more platforms of the pool).

Registered names (all 1 inference thread, one stream, the LATENCY hint, unless the name ends in ``-<n>t``):

* ``ov-fp32`` — every layer in f32 (``INFERENCE_PRECISION_HINT=f32``; the CPU plugin's default on a
  BF16-capable CPU would be bf16, so the hint is always explicit);
* ``ov-bf16`` — layers the plugin supports in bf16 run in bf16 (AVX-512 BF16 / AMX); building it on a
  CPU without BF16 is a one-line :class:`~moonlit.common.errors.InputError`;
* ``ov-int8`` — the static QDQ INT8 graph of ``ort-int8`` (same export, ``quant_pre_process``,
  per-channel S8 weights, U8 activations, calibrated on the same seeded random inputs), so both
  engines time the same INT8 graph; the plugin's low-precision transformations run it as u8/i8
  kernels and the layers left float in f32.

A torch module is exported with :func:`moonlit.common.export.onnx.export_onnx` into a temp dir, as for
the ORT platforms, and compiled with :func:`moonlit.common.profiling.openvino.openvino_compile`; timing
uses the common ``"openvino"`` runner (one reusable ``InferRequest``), so the per-call overhead model (a
one-element Add) goes through the same compile options and input feed. A kernel is timed as its own
model, with the layout reorders the plugin puts at its ends (there is no optimized graph to strip, as
:mod:`moonlit.litepred.profile.kernel_io` does for onnxruntime); the per-model overhead term absorbs the
difference. Which ONNX nodes OpenVINO runs as one kernel is read from its executed graph
(:mod:`moonlit.litepred.kernels.ov_fusion`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.profiling import openvino as ov_engine
from moonlit.common.profiling.backends import Runner, make_runner
from moonlit.litepred.profile.base import fixed_threads, register_platform
from moonlit.litepred.profile.ort import (
    CALIBRATION_BATCHES,
    OnnxPlatform,
    _tiny_add_model,
    is_quantized,
)

__all__ = ["OpenVinoBackend", "OV_PRECISIONS", "check_compiles", "openvino_version"]

OV_PRECISIONS = ("fp32", "bf16", "int8")


def openvino_version() -> str:
    import openvino

    return openvino.get_version()


def _check_precision_supported(precision: str, name: str) -> None:
    """A platform the CPU cannot run natively is an input error, named before anything is measured."""
    if precision not in ov_engine.supported_precisions():
        raise InputError(f"platform {name!r} needs {precision} support in the CPU's OpenVINO OPTIMIZATION_CAPABILITIES "
                         f"(this CPU runs {ov_engine.supported_precisions()}); expected a CPU with AVX-512 BF16 or AMX")


def check_compiles(path: str | Path, precision: str) -> None:
    """Compile ``path`` once in a child process: OpenVINO 2026.4's CPU plugin segfaults compiling some QDQ graphs
    (timm's ghostnet_100 at int8), which would end the whole profiling run. Raises RuntimeError naming the file."""
    code = ("import sys; from moonlit.common.profiling.openvino import openvino_compile; "
            "openvino_compile(sys.argv[1], precision=sys.argv[2])")
    child = subprocess.run([sys.executable, "-c", code, str(path), precision], capture_output=True, text=True,
                           check=False)
    if child.returncode < 0:
        raise RuntimeError(f"OpenVINO's CPU plugin crashed (signal {-child.returncode}) compiling {path} at "
                           f"{precision}; this model cannot be measured on this platform")


class OpenVinoBackend(OnnxPlatform):
    """OpenVINO CPU plugin; ``precision`` "fp32", "bf16" or "int8" (QDQ INT8 as ``ort-int8`` makes it)."""

    runtime = "openvino"
    optimization_level = "default"

    def __init__(self, name: str, *, precision: str = "fp32", calibration_batches: int = CALIBRATION_BATCHES,
                 **options: Any) -> None:
        if precision not in OV_PRECISIONS:
            raise InputError(f"precision must be one of {list(OV_PRECISIONS)}, got {precision!r}")
        if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 1:
            raise InputError(f"calibration_batches must be a positive int, got {calibration_batches!r}")
        super().__init__(name, **options)
        _check_precision_supported(precision, self.name)
        self.precision = precision
        self.calibration_batches = calibration_batches

    _workdir_prefix = "litepred-ov-"

    def _runtime_version(self) -> str:
        return openvino_version()

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["inference_precision_hint"] = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[self.precision]
        meta["kernel_boundaries"] = "keep"
        if self.precision == "int8":
            meta["quantization"] = {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel",
                                    "calibration": f"{self.calibration_batches} random batches, minmax",
                                    "preprocess": "quant_pre_process", "float_layers": "f32"}
        return meta

    def _overhead_key(self) -> tuple[Any, ...]:
        return (self.runtime, self.threads, self.precision)

    def _overhead_runner(self) -> Runner:
        with tempfile.TemporaryDirectory(prefix="litepred-overhead-") as workdir:
            path = _tiny_add_model(Path(workdir) / "add.onnx")
            # The one-element Add holds no QDQ pair: the INT8 platform's call overhead is its f32 engine's.
            precision = "fp32" if self.precision == "int8" else self.precision
            return make_runner("openvino", path, {"x": np.zeros(1, dtype=np.float32)}, threads=self.threads,
                               precision=precision)

    def _compile_precision(self, path: Path) -> str:
        """``int8`` compiles a quantized graph; ops ORT's quantizer leaves in float (a pooling, a layout op alone)
        give a graph without Q/DQ, which runs in f32, as the float rest of an INT8 model does."""
        return "fp32" if self.precision == "int8" and not is_quantized(path) else self.precision

    def _runner(self, path: Path, feed: dict[str, np.ndarray]) -> Runner:
        return make_runner("openvino", path, feed, threads=self.threads, precision=self._compile_precision(path))

    def prepare_runner(self, model: nn.Module, example_inputs: Any, workdir: Path, *, kernel: bool = False) -> Runner:
        """A runner of ``model`` (a kernel runs as its own model: see the module docstring; a whole INT8 model is
        compiled in a child process first, :func:`check_compiles`)."""
        timed, feed = self.export(model, example_inputs, workdir)
        if not kernel and self.precision == "int8":
            check_compiles(timed, self._compile_precision(timed))
        return self._runner(timed, feed)

    def _check_timed(self, timed: Path) -> None:
        """A whole INT8 model is compiled in a child process first (:func:`check_compiles`)."""
        if self.precision == "int8":
            check_compiles(timed, self._compile_precision(timed))


@register_platform("ov-fp32")
def ov_fp32(**options: Any) -> OpenVinoBackend:
    """OpenVINO CPU, f32."""
    return OpenVinoBackend("ov-fp32", precision="fp32", **options)


@register_platform("ov-bf16")
def ov_bf16(**options: Any) -> OpenVinoBackend:
    """OpenVINO CPU, bf16 (AVX-512 BF16 / AMX)."""
    return OpenVinoBackend("ov-bf16", precision="bf16", **options)


@register_platform("ov-int8")
def ov_int8(**options: Any) -> OpenVinoBackend:
    """OpenVINO CPU, the static QDQ INT8 graph of ``ort-int8``; float layers in f32."""
    return OpenVinoBackend("ov-int8", precision="int8", **options)


@register_platform("ov-fp32-2t")
def ov_fp32_2t(**options: Any) -> OpenVinoBackend:
    """``ov-fp32`` with two inference threads."""
    return OpenVinoBackend("ov-fp32", precision="fp32", **fixed_threads("ov-fp32-2t", 2, options))
