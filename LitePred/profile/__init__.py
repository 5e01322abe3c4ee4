"""Stage 3 of LitePred's pipeline: profiling kernels and models on a platform (NSDI'24 §4.2, §5).

What to profile: :mod:`.sampler` draws kernel configurations from the kernels of the training
architectures and their neighbours, :mod:`.vae` draws them from a VAE fitted to those (the paper's
sampler for a new platform), :mod:`.kernel_builder` turns a configuration into a one-kernel module.
Where: platforms registered by name. ``get_platform("ort-fp32", runs=50).measure(module, inputs)``
profiles a kernel or a whole model; ``list_platforms()`` names them: ``ort-fp32``,
``ort-fp32-noopt``, ``ort-int8``, ``torch-fp32`` (1 thread), their ``-2t`` two-thread variants,
``debug`` (deterministic synthetic latency for CI) and ``debug-int8`` (a second synthetic
platform, a transfer target). The contract is in :mod:`.base`, the measurement protocol in
:mod:`.protocol`. The results: :mod:`.dataset` (one JSON Lines record per measurement).
"""

from moonlit.litepred.profile.base import (
    Backend,
    cpu_isa_flags,
    get_platform,
    list_platforms,
    register_platform,
)
from moonlit.litepred.profile.debug import (
    DebugBackend,
    DebugCostModel,
    GraphCost,
    graph_cost,
)
from moonlit.litepred.profile.ort import OrtBackend, resolve_onnx_inputs
from moonlit.litepred.profile.protocol import Measurement, Protocol, measure_runner
from moonlit.litepred.profile.torch_backend import TorchBackend

__all__ = [
    "Backend", "Measurement", "Protocol", "register_platform", "get_platform", "list_platforms",
    "measure_runner", "cpu_isa_flags", "resolve_onnx_inputs",
    "OrtBackend", "TorchBackend", "DebugBackend", "DebugCostModel", "GraphCost", "graph_cost",
]
