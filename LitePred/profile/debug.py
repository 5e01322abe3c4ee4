"""A deterministic synthetic backend so CI runs LitePred's pipeline in seconds (nn-Meter's idea
of a debug backend; no timing at all).

Latency is computed from the ONNX graph (torch modules are exported first), after shape
inference (ONNX's, or onnxruntime's symbolic one where ONNX's leaves a shape unknown), by a
fixed formula. With ``size(t)`` a tensor's bytes, for each node ``n`` that is
not pure metadata/view (``Constant``, ``Shape``, ``Reshape``, ``Flatten``, ``(Un)Squeeze``,
``Identity``, ``Dropout`` cost nothing) nor shape arithmetic (a non-MAC node whose tensors all
have at most :data:`SCALAR_ELEMENTS` elements, e.g. the scale of exported attention):

    t_n = fixed(op) + MACs_n / macs_per_ms + vector_ops_n / vector_ops_per_ms
          + moved_n / bytes_per_ms * cache_factor(ws_n)

* ``fixed(op)``: ``compute_fixed_ms`` for Conv/ConvTranspose/Gemm/MatMul, ``other_fixed_ms`` else;
* ``MACs_n``: Conv: ``out_elements × prod(W.shape[1:])``; ConvTranspose:
  ``in_elements × prod(W.shape[1:])``; MatMul/Gemm: ``out_elements × K``; 0 for other ops;
* ``vector_ops_n`` (non-MAC ops only): ``ops_per_element(op) ×`` the element count of the
  node's largest input or output tensor — 1 op per element by default, more for
  transcendental ops and pools (:data:`VECTOR_OPS_PER_ELEMENT`);
* ``moved_n = Σ inputs size × (1 − reuse_discount if the input was produced inside the graph and
  fits in cache_bytes, else 1) + Σ outputs size``: an activation handed over from the previous
  kernel is still in cache, one fed from outside (a kernel profiled alone) is not. This is why a
  whole model costs a little *less* than the sum of its kernels profiled one by one;
* ``ws_n`` = all input and output bytes; ``cache_factor = 1`` if ``ws_n <= cache_bytes``, else
  ``1 + cache_penalty × (1 − cache_bytes / ws_n)`` (continuous, at most ``1 + cache_penalty``).

The graph latency is ``Σ t_n × (1 + noise × u)`` with ``u ∈ [−1, 1)`` read from the SHA-256 of
the graph's signature (op types, attributes, tensor shapes and types in node order; not tensor
names or weight values), so the same architecture always gets the same ±``noise`` deviation.
The "raw" median adds ``call_overhead_ms``, reported as the overhead and subtracted again,
exactly as the timed backends do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from moonlit.common.export.onnx import export_onnx
from moonlit.common.profiling.backends import Runner
from moonlit.litepred.profile.base import Backend, register_platform
from moonlit.litepred.profile.ort import resolve_onnx_inputs
from moonlit.litepred.profile.protocol import Measurement

__all__ = ["DEBUG_INT8_COST_MODEL", "DebugBackend", "DebugCostModel", "GraphCost", "graph_cost", "VECTOR_OPS_PER_ELEMENT",
           "FREE_OPS", "MAC_OPS", "SCALAR_ELEMENTS"]

COST_MODEL_VERSION = "1"
MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FREE_OPS = frozenset({"Constant", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                      "Dropout"})
SCALAR_ELEMENTS = 16  # a non-MAC node none of whose tensors is larger is shape arithmetic: free
VECTOR_OPS_PER_ELEMENT: Mapping[str, float] = {
    "Sigmoid": 4.0, "Tanh": 4.0, "Exp": 4.0, "Erf": 4.0, "Softmax": 6.0, "Gelu": 6.0,
    "LayerNormalization": 6.0, "HardSigmoid": 2.0, "HardSwish": 2.0, "Div": 2.0, "Sqrt": 2.0,
    "Pow": 4.0, "AveragePool": 2.0, "MaxPool": 2.0,
}


@dataclasses.dataclass(frozen=True)
class DebugCostModel:
    """Constants of the synthetic formula (module docstring).

    The defaults were set so whole models land near ``ort-fp32`` (1 thread) on this repo's
    AVX-512 EPYC: ResNet-18 16.7 ms (measured 16–18), MobileNetV3-Small 2.1 ms (~1.6),
    ViT-Tiny/16 20 ms (~16). They make a plausible platform, not a prediction of one.
    """

    compute_fixed_ms: float = 0.004
    other_fixed_ms: float = 0.002
    macs_per_ms: float = 1.5e8  # 150 GMAC/s: large FP32 convs on one AVX-512 core
    vector_ops_per_ms: float = 1e7
    bytes_per_ms: float = 3e7  # 30 GB/s
    cache_bytes: int = 1 << 20  # 1 MiB, the L2 of one EPYC core
    cache_penalty: float = 0.5
    reuse_discount: float = 0.5
    noise: float = 0.015
    call_overhead_ms: float = 0.005

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"DebugCostModel.{field.name} must be a finite number >= 0, got {value!r}")
        for field in ("macs_per_ms", "vector_ops_per_ms", "bytes_per_ms", "cache_bytes"):
            if getattr(self, field) <= 0:
                raise ValueError(f"DebugCostModel.{field} must be > 0, got {getattr(self, field)!r}")
        if self.reuse_discount > 1 or self.noise >= 1:
            raise ValueError(f"reuse_discount must be <= 1 and noise < 1, got {self.reuse_discount!r}, {self.noise!r}")


@dataclasses.dataclass(frozen=True)
class GraphCost:
    """Synthetic latency of one graph and the totals behind it."""

    latency_ms: float  # noise included, overhead excluded
    noiseless_ms: float
    noise_factor: float
    nodes: int  # nodes that cost something
    macs: int
    moved_bytes: float


def _shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape") or not all(d.HasField("dim_value") for d in tensor.shape.dim):
        return None
    return tuple(d.dim_value for d in tensor.shape.dim)


def _tensor_table(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """name → (shape, element type) for every tensor of a shape-inferred graph."""
    graph = model.graph
    table: dict[str, tuple[tuple[int, ...], int]] = {}
    for init in graph.initializer:
        table[init.name] = (tuple(init.dims), init.data_type)
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shape = _shape(value)
        if shape is not None and value.name not in table:
            table[value.name] = (shape, value.type.tensor_type.elem_type)
    for node in graph.node:
        if node.op_type == "Constant":
            attribute = next((a for a in node.attribute if a.name == "value"), None)
            if attribute is not None:
                table[node.output[0]] = (tuple(attribute.t.dims), attribute.t.data_type)
    return table


def _attribute_signature(attribute: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, onnx.TensorProto):  # constants: shape and type, not their values
        return ("tensor", value.data_type, tuple(value.dims))
    if isinstance(value, (list, tuple)):
        return tuple(v.decode() if isinstance(v, bytes) else v for v in value)
    return value.decode() if isinstance(value, bytes) else value


def _noise_unit(signature: Iterable[Any]) -> float:
    digest = hashlib.sha256(repr(list(signature)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 * 2.0 - 1.0  # uniform in [-1, 1)


def _macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]], out_elements: int) -> int:
    if node.op_type == "Conv":
        return out_elements * math.prod(shapes[node.input[1]][1:])
    if node.op_type == "ConvTranspose":
        return math.prod(shapes[node.input[0]]) * math.prod(shapes[node.input[1]][1:])
    if node.op_type == "MatMul":
        return out_elements * shapes[node.input[0]][-1]
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return out_elements * shapes[node.input[0]][0 if trans_a else 1]
    return 0


def graph_cost(model: onnx.ModelProto, cost_model: DebugCostModel = DebugCostModel()) -> GraphCost:
    """The synthetic latency of a shape-inferred ONNX graph (formula in the module docstring)."""
    table = _tensor_table(model)
    shapes = {name: shape for name, (shape, _) in table.items()}

    def size(name: str, node: onnx.NodeProto) -> int:
        if name not in table:
            raise ValueError(f"shape of tensor {name!r} (node {node.name!r}, {node.op_type}) is unknown "
                             "after ONNX shape inference; the debug backend needs static shapes")
        shape, elem_type = table[name]
        return math.prod(shape) * onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize

    warm: set[str] = set()  # tensors produced inside the graph (by a node that moves data)
    initializers = {init.name for init in model.graph.initializer}
    signature: list[Any] = [("input", table.get(value.name)) for value in model.graph.input
                            if value.name not in initializers]
    total = moved_total = 0.0
    macs_total = nodes = 0
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        attributes = tuple(sorted((a.name, _attribute_signature(a)) for a in node.attribute))
        signature.append((node.op_type, attributes, tuple(table.get(name) for name in inputs),
                          tuple(table.get(name) for name in node.output if name)))
        if node.op_type in FREE_OPS:
            if inputs and inputs[0] in warm:
                warm.update(name for name in node.output if name)
            continue
        in_sizes = [size(name, node) for name in inputs]
        out_sizes = [size(name, node) for name in node.output if name]
        out_elements = sum(math.prod(shapes[name]) for name in node.output if name)
        largest = max(math.prod(shapes[name]) for name in [*inputs, *node.output] if name)
        if node.op_type not in MAC_OPS and largest <= SCALAR_ELEMENTS:
            continue  # shape arithmetic: runtimes constant-fold it or run it inline
        macs = _macs(node, shapes, out_elements)
        vector_ops = 0.0
        if node.op_type not in MAC_OPS:
            vector_ops = VECTOR_OPS_PER_ELEMENT.get(node.op_type, 1.0) * largest
        moved = sum(
            nbytes * (1 - cost_model.reuse_discount if name in warm and nbytes <= cost_model.cache_bytes else 1)
            for name, nbytes in zip(inputs, in_sizes)
        ) + sum(out_sizes)
        working_set = sum(in_sizes) + sum(out_sizes)
        cache_factor = 1.0
        if working_set > cost_model.cache_bytes:
            cache_factor += cost_model.cache_penalty * (1 - cost_model.cache_bytes / working_set)
        fixed = cost_model.compute_fixed_ms if node.op_type in MAC_OPS else cost_model.other_fixed_ms
        total += (fixed + macs / cost_model.macs_per_ms + vector_ops / cost_model.vector_ops_per_ms
                  + moved / cost_model.bytes_per_ms * cache_factor)
        moved_total += moved
        macs_total += macs
        nodes += 1
        warm.update(name for name in node.output if name)
    noise_factor = 1.0 + cost_model.noise * _noise_unit(signature)
    return GraphCost(total * noise_factor, total, noise_factor, nodes, macs_total, moved_total)


def _all_shapes_static(model: onnx.ModelProto) -> bool:
    table = _tensor_table(model)
    return all(name in table for node in model.graph.node for name in node.output if name)


def _with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Copy of ``model`` with the given static input shapes, shape-inferred.

    ONNX's own inference first; where it leaves a shape unknown (e.g. an ``Expand`` whose target
    shape is computed from ``Shape`` ops, as in exported ViTs), onnxruntime's symbolic shape
    inference, which evaluates such shape arithmetic.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for extent in shapes[value.name]:
                dims.add().dim_value = int(extent)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    if _all_shapes_static(inferred):
        return inferred
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=True)


class DebugBackend(Backend):
    """Deterministic synthetic latency from the ONNX graph; ``cost_model`` sets the constants."""

    runtime = "debug"
    precision = "fp32"
    optimization_level = "synthetic"

    def __init__(self, name: str = "debug", *, cost_model: DebugCostModel | None = None,
                 **options: Any) -> None:
        if options.get("threads", 1) != 1:
            raise ValueError(f"the debug backend models one thread, got threads={options['threads']!r}")
        self.cost_model = cost_model or DebugCostModel()
        options.setdefault("overhead_ms", self.cost_model.call_overhead_ms)
        super().__init__(name, **options)

    def _runtime_version(self) -> str:
        return f"debug-cost-model-{COST_MODEL_VERSION}"

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "cost_model": dataclasses.asdict(self.cost_model)}

    def _overhead_key(self) -> tuple[Any, ...]:
        return (self.runtime, self.cost_model)

    def _overhead_runner(self) -> Runner:  # never timed: the overhead is a constant of the model
        return Runner(lambda: None, "debug")

    def cost(self, path: str | Path, inputs: Any = None) -> GraphCost:
        """The :class:`GraphCost` of an ``.onnx`` file for ``inputs`` (arrays or shapes)."""
        feed = resolve_onnx_inputs(path, inputs)
        model = onnx.load(str(path))
        return graph_cost(_with_input_shapes(model, {name: array.shape for name, array in feed.items()}),
                          self.cost_model)

    def measure(self, model: nn.Module, example_inputs: Any) -> Measurement:
        if not isinstance(model, nn.Module):
            raise ValueError(f"measure() needs an nn.Module, got {type(model).__name__}")
        with tempfile.TemporaryDirectory(prefix="litepred-debug-") as workdir:
            path = export_onnx(model, example_inputs, Path(workdir) / "model.onnx", check=False)
            return self._measurement(self.cost(path, example_inputs))

    def measure_many(self, items: Sequence[tuple[nn.Module, Any]], *, kernels: bool = False
                     ) -> list[Measurement | Exception]:
        """Synthetic latency is not timed, so nothing to interleave: each item on its own."""
        results: list[Measurement | Exception] = []
        for model, example_inputs in items:
            try:
                results.append(self.measure(model, example_inputs))
            except (ValueError, RuntimeError) as error:
                results.append(error)
        return results

    def measure_onnx(self, path: str | Path, inputs: Any = None) -> Measurement:
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        return self._measurement(self.cost(path, inputs))

    def _measurement(self, cost: GraphCost) -> Measurement:
        overhead = self.overhead_ms()
        return Measurement(
            backend=self.name, median_ms=cost.latency_ms, raw_median_ms=cost.latency_ms + overhead,
            p10_ms=cost.latency_ms, p90_ms=cost.latency_ms, runs=0, warmup=0, overhead_ms=overhead,
            spread=0.0, details={"synthetic": True, **dataclasses.asdict(cost)},
        )


@register_platform("debug")
def debug(**options: Any) -> DebugBackend:
    """Synthetic latency for CI; ``name`` and ``cost_model`` options make other synthetic platforms."""
    return DebugBackend(**options)


# A second synthetic platform, INT8-like: dense MACs 4x cheaper, per-kernel fixed costs (the
# quantize/dequantize at each kernel's edges) and memory traffic unchanged. Not a rescaling of
# `debug`: compute-bound kernels speed up, memory-bound ones do not. For transfer tests and demos.
DEBUG_INT8_COST_MODEL = DebugCostModel(compute_fixed_ms=0.006, other_fixed_ms=0.003, macs_per_ms=6e8)


@register_platform("debug-int8")
def debug_int8(**options: Any) -> DebugBackend:
    """Synthetic INT8-like latency (:data:`DEBUG_INT8_COST_MODEL`), a transfer target for CI."""
    options.setdefault("name", "debug-int8")
    options.setdefault("cost_model", DEBUG_INT8_COST_MODEL)
    return DebugBackend(**options)
