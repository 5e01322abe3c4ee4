"""Complexity and latency profiling shared by the papers.

:mod:`.flops` counts MACs/params (torch's FlopCounterMode); :mod:`.latency` is the timing
protocol (warm-up, many runs, median, interleaved A/B, pinned threads, load average, JSON) with
backends in :mod:`.backends` and the environment record in :mod:`.environment`. :mod:`.openvino` is the second
CPU engine (the ``"openvino"`` backend at FP32/BF16/INT8 and its executed-graph introspection); it imports
``openvino`` only when used.
"""

from moonlit.common.profiling.backends import (
    Runner,
    available_backends,
    get_backend,
    make_runner,
    register_backend,
)
from moonlit.common.profiling.environment import environment_record
from moonlit.common.profiling.flops import ComplexityReport, count_macs, measure_complexity
from moonlit.common.profiling.latency import (
    ComparisonResult,
    LatencyResult,
    MultiComparisonResult,
    benchmark,
    compare_latency,
    compare_many,
    measure_latency,
)
from moonlit.common.profiling.openvino import (
    ExecutedLayer,
    LayerCounter,
    executed_layers,
    openvino_compile,
    openvino_runner,
    per_layer_counters,
)

__all__ = [
    "ComplexityReport", "count_macs", "measure_complexity",
    "Runner", "register_backend", "get_backend", "available_backends", "make_runner",
    "LatencyResult", "ComparisonResult", "MultiComparisonResult",
    "measure_latency", "benchmark", "compare_latency", "compare_many", "environment_record",
    "openvino_compile", "openvino_runner", "executed_layers", "per_layer_counters", "ExecutedLayer", "LayerCounter",
]
