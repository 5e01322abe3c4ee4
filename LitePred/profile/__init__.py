"""LitePred's profiling platforms (NSDI'24 §5): backends registered by name.

``get_backend("ort-fp32", runs=50).measure(module, inputs)`` profiles a kernel or a whole model;
``list_backends()`` names the platforms: ``ort-fp32``, ``ort-fp32-noopt``, ``ort-int8``,
``torch-fp32`` (1 thread), their ``-2t`` two-thread variants, ``debug`` (deterministic
synthetic latency for CI) and ``debug-int8`` (a second synthetic platform, a transfer target).
The contract is in :mod:`.base`, the measurement protocol in :mod:`.protocol`.
"""

from moonlit.litepred.profile.base import Backend, cpu_isa_flags, get_backend, list_backends, register_backend
from moonlit.litepred.profile.debug import DebugBackend, DebugCostModel, GraphCost, graph_cost
from moonlit.litepred.profile.ort import OrtBackend, resolve_onnx_inputs
from moonlit.litepred.profile.protocol import Measurement, Protocol, measure_runner
from moonlit.litepred.profile.torch_backend import TorchBackend

__all__ = [
    "Backend", "Measurement", "Protocol", "register_backend", "get_backend", "list_backends",
    "measure_runner", "cpu_isa_flags", "resolve_onnx_inputs",
    "OrtBackend", "TorchBackend", "DebugBackend", "DebugCostModel", "GraphCost", "graph_cost",
]
