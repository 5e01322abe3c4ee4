"""OpenVINO IR export (``.xml`` graph + ``.bin`` weights) beside ONNX, for deployment with OpenVINO's CPU plugin.

A torch module goes through the project's ONNX export (:func:`moonlit.common.export.onnx.export_onnx`, which checks
the graph in onnxruntime and sets the IR version explicitly) and then ``ov.convert_model``; an existing ONNX file
(FP32, or QDQ INT8 from :mod:`.int8`) goes to ``ov.convert_model`` directly. ``ov.save_model`` writes the pair;
weights stay FP32 unless ``compress_to_fp16`` (``ov.save_model`` itself compresses by default).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moonlit.common.errors import InputError

__all__ = ["export_openvino_ir", "validate_onnx_model"]


def export_openvino_ir(model_or_onnx: Any, path_xml: str | Path, *, example: Any = None,
                       compress_to_fp16: bool = False, dynamic_axes: Mapping[str, Any] | None = None) -> Path:
    """Write ``model_or_onnx`` as OpenVINO IR ``path_xml`` (+ the ``.bin`` beside it); returns ``path_xml``.

    ``model_or_onnx``: a ``torch.nn.Module`` (then ``example`` is required: the export example inputs, and
    ``dynamic_axes`` is passed to :func:`~moonlit.common.export.onnx.export_onnx`) or an ``.onnx`` path.
    Both files are written to a temporary folder beside ``path_xml`` and renamed into place (``.bin`` first, so
    an ``.xml`` never names missing weights); nothing is written when an input is wrong.
    """
    import torch

    path_xml = Path(path_xml)
    if path_xml.suffix != ".xml":
        raise InputError(f"OpenVINO IR path should end in .xml, got {path_xml}")
    if isinstance(model_or_onnx, torch.nn.Module):
        if example is None:
            raise InputError("exporting a torch module to OpenVINO IR needs example inputs (example=...)")
        onnx_path = None
    elif isinstance(model_or_onnx, (str, Path)):
        onnx_path = Path(model_or_onnx)
        if onnx_path.suffix != ".onnx" or not onnx_path.is_file():
            raise InputError(f"ONNX model {onnx_path} does not exist or is not an .onnx file; "
                             "expected an .onnx path or a torch.nn.Module")
        if example is not None or dynamic_axes is not None:
            raise InputError("example and dynamic_axes apply to torch modules only; the ONNX file "
                             f"{onnx_path} is converted as it is")
    else:
        raise InputError("model_or_onnx must be a torch.nn.Module or an .onnx path, "
                         f"got {type(model_or_onnx).__name__}")

    import openvino as ov
    from openvino.tools.ovc.error import Error as ConversionError

    from moonlit.common.export.onnx import export_onnx

    if onnx_path is not None:
        validate_onnx_model(onnx_path, str(onnx_path))
    path_xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".moonlit-ir-", dir=path_xml.parent) as workdir:
        if onnx_path is None:
            onnx_path = export_onnx(model_or_onnx, example, Path(workdir) / "model.onnx", dynamic_axes=dynamic_axes)
        try:
            converted = ov.convert_model(str(onnx_path))
        except (RuntimeError, ConversionError) as error:  # OpenVINO's frontends report over many lines
            first = next((line for line in str(error).splitlines() if line.strip()), "")
            raise InputError(f"OpenVINO cannot convert {onnx_path} ({first.strip()[:200]}); expected a valid ONNX model"
                             ) from None
        staged = Path(workdir) / path_xml.name
        ov.save_model(converted, str(staged), compress_to_fp16=compress_to_fp16)
        os.replace(staged.with_suffix(".bin"), path_xml.with_suffix(".bin"))
        os.replace(staged, path_xml)
    return path_xml


def validate_onnx_model(source: str | Path | bytes, label: str) -> None:
    """Raise :class:`InputError` unless ``source`` (an ``.onnx`` path or serialized bytes) passes ``onnx.checker``
    and every name in it is UTF-8 text.

    Run before OpenVINO reads a model: its ONNX frontend crashes the process (segfault) on some malformed graphs,
    e.g. an op type that is not valid UTF-8, and tries every other frontend on bytes that are not ONNX at all.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        if isinstance(source, bytes):
            proto = onnx.ModelProto.FromString(source)
        else:
            proto = onnx.load(str(source), load_external_data=False)
        if not proto.graph.node:
            raise InputError(f"{label} holds no ONNX graph nodes; expected a serialized ONNX model")
        field = _non_text_field(proto)
        if field is not None:
            raise InputError(f"{label} has a {field} that is not UTF-8 text; expected a valid ONNX model")
        # the path form reads external data and models over 2 GiB
        onnx.checker.check_model(proto if isinstance(source, bytes) else str(source))
    except (DecodeError, onnx.checker.ValidationError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise InputError(f"{label} is not a valid ONNX model ({first[:200]}); expected a serialized ONNX graph"
                         ) from None


def _non_text_field(message: Any, path: str = "model") -> str | None:
    """The first string field of ``message`` (recursively) that protobuf hands back as bytes: not valid UTF-8."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        values = value if repeated else [value]
        if field.type == FieldDescriptor.TYPE_STRING:
            if any(isinstance(item, bytes) for item in values):
                return f"{path}.{field.name}"
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in values:
                found = _non_text_field(item, f"{path}.{field.name}")
                if found is not None:
                    return found
    return None
