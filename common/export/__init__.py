"""Deployment exports shared by the papers: ONNX (:mod:`.onnx`), INT8 (:mod:`.int8`), OpenVINO IR (:mod:`.openvino`)."""

from moonlit.common.export.int8 import (
    CalibrationReader,
    QuantizationSummary,
    export_static_int8,
    quantization_summary,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from moonlit.common.export.onnx import (
    ExportVerificationError,
    export_onnx,
    max_supported_ir_version,
    onnx_input_feed,
)
from moonlit.common.export.openvino import export_openvino_ir

__all__ = [
    "ExportVerificationError", "export_onnx", "max_supported_ir_version", "onnx_input_feed",
    "CalibrationReader", "QuantizationSummary", "quantization_summary",
    "export_static_int8", "quantize_static_int8", "quantize_dynamic_int8", "export_openvino_ir",
]
