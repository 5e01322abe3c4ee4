"""ONNX export of a token-pruned ToP classifier that drops tokens inside the graph (ToP §4, deployment).

:class:`~moonlit.top.inference.TokenDroppingModel` shrinks the hidden states in eager PyTorch;
this module writes the same computation as one ONNX graph with dynamic batch and sequence axes,
so onnxruntime (FP32 or dynamic INT8) runs the pruned model with its real speedup:

* token scores from each deciding layer's attention probabilities (``ranking.token_scores``),
  ranks by a sort (ONNX ``TopK``), rank → bin (``masks.rank_to_bin``) and the deployed 0/1 bin and
  layer gates, baked in as constants — all through ``ToPModel._next_keep``, not re-implemented;
* the kept tokens gathered to the front (original order kept) and the batch cut to its largest
  kept count, a length computed as a tensor.

The legacy TorchScript exporter (what ``common.export.export_onnx`` uses) traces: any Python int
taken from a tensor (``int(counts.max())``, slicing with a tensor) is frozen into the graph as a
constant, which would hard-code the export example's lengths. :class:`ExportableDroppingModel`
therefore does the gather with tensor ops only: a descending ``TopK`` over a unique key
(kept flag, then earlier position) orders the tokens, and ``Range(0, max kept)`` — from
``torch.arange(end=<0-dim tensor>)``, which the tracer records as an op — selects the slots.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.onnx import symbolic_helper

from moonlit.common.export.int8 import quantization_summary, quantize_dynamic_int8
from moonlit.common.export.onnx import export_onnx

from .inference import TokenDroppingModel, run_dropping_layers
from .masks import GateValues
from .model import ToPModel

__all__ = ["OUTPUT_NAMES", "ExportableDroppingModel", "LogitsOnly", "export_pruned_onnx", "quantize_pruned_dynamic"]

logger = logging.getLogger(__name__)

_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("logits", "kept_counts")


def _sort_as_topk(g, self, *args):  # noqa: ANN001, ANN202 (TorchScript-exporter symbolic)
    """``aten::sort`` → ONNX ``TopK`` over the whole axis, for both overloads, ``stable=True`` included.

    The legacy exporter's own symbolic reads ``sort(x, stable, dim, descending)`` as the old
    overload with an ``out`` argument and fails. ONNX TopK breaks ties by the lower index (operator
    spec, opset >= 11) in both directions, which is exactly a stable sort.
    """
    dim, descending = args[-2:]
    dim = symbolic_helper._get_const(dim, "i", "dim")
    descending = symbolic_helper._get_const(descending, "b", "descending")
    size = g.op("Gather", g.op("Shape", self), g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64)))
    return g.op("TopK", self, size, axis_i=dim, largest_i=int(descending), sorted_i=1, outputs=2)


@contextlib.contextmanager
def _stable_sort_exportable(opset: int) -> Iterator[None]:
    """Register :func:`_sort_as_topk` for ``opset`` for the duration of one export."""
    torch.onnx.register_custom_op_symbolic("aten::sort", _sort_as_topk, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::sort", opset)


def _gather_kept(keep: torch.Tensor) -> torch.Tensor:
    """[B, n'] per row, the indices of its kept tokens first, in order; n' = largest kept count.

    Trace-safe twin of ``inference._left_aligned_order``: the key ``keep * T + (T - 1 - position)``
    is unique per row, so a plain descending sort (no reliance on sort stability) puts kept tokens
    first in their original order, and the slots are chosen with a Range whose end is a tensor.
    """
    length = keep.shape[1]
    positions = torch.arange(length, device=keep.device).unsqueeze(0)
    key = keep.long() * length + (length - 1 - positions)
    order = torch.sort(key, dim=1, descending=True).indices
    width = keep.sum(dim=1).max().clamp_min(1)
    return order.index_select(1, torch.arange(width, device=keep.device))


class ExportableDroppingModel(nn.Module):
    """Eval-mode ToP with physical token dropping, written for tracing; returns (logits, kept_counts [B, L]).

    Computes what :class:`~moonlit.top.inference.TokenDroppingModel` computes, with the deployed
    0/1 gates stored as buffers (constants of the exported graph). Reuses the wrapped
    :class:`~moonlit.top.model.ToPModel`'s embeddings, ``_attention``, ``_key_bias``,
    ``_next_keep``, ``_feed_forward`` and ``_classify``.
    """

    def __init__(self, top: ToPModel, gate_values: GateValues | None = None) -> None:
        super().__init__()
        if top.rank_source != "attention":
            raise ValueError(f"only attention-score ranking can be exported, got rank_source={top.rank_source!r}")
        # TokenDroppingModel validates the settings (score_rows="valid") and the 0/1 gates for us.
        encoder = TokenDroppingModel(top).encoder
        gates = encoder._gate_values(gate_values)
        self.top = top
        self._location_after = dict(encoder._location_after)
        if gates is not None:
            self.register_buffer("bin_gates", gates.bins.detach().clone())
            self.register_buffer("layer_gates", gates.layers.detach().clone())
        else:
            self.bin_gates = self.layer_gates = None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        top = self.top
        if top.training or top.hf_model.training:
            raise RuntimeError("the exportable dropping model reproduces eval-mode ToP only: call .eval()")
        gates = None if self.bin_gates is None else GateValues(bins=self.bin_gates, layers=self.layer_gates)
        present = attention_mask.bool()
        protected = top._protected(input_ids, present)
        hidden = top.base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        encoded = run_dropping_layers(top, hidden, present, protected, gates, self._location_after, _gather_kept)
        return top._classify(encoded.hidden), encoded.kept_counts


class LogitsOnly(nn.Module):
    """HF classifier → logits tensor (for the dense ONNX export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _shortest_sample(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The shortest sample of ``batch`` alone, cut to its own length: a check input of another size and length.

    The shortest, so that its kept counts differ from the example's largest ones, which a frozen
    width would have baked in.
    """
    lengths = batch["attention_mask"].sum(dim=1)
    index = int(lengths.argmin())
    length = max(int(lengths[index]), 1)
    return {name: value[index : index + 1, :length] for name, value in batch.items()}


def export_pruned_onnx(
    model: ToPModel,
    path: str | Path,
    *,
    example_batch: Mapping[str, torch.Tensor],
    gate_values: GateValues | None = None,
    opset: int = 17,
    check: bool = True,
    check_batches: Sequence[Mapping[str, torch.Tensor]] = (),
    atol: float = 1e-4,
) -> Path:
    """Export ``model`` (eval mode, physically dropping tokens) to ONNX; outputs ``logits`` and ``kept_counts``.

    ``example_batch`` holds ``input_ids`` and ``attention_mask`` (and ``token_type_ids``, which then
    becomes a graph input); batch and sequence axes are dynamic. The gates are the model's own
    deterministic ones unless ``gate_values`` (0/1) are given. With ``check``, onnxruntime must
    match torch within ``atol`` on the example, on its shortest sample alone cut to its own length
    (another batch size and length, so frozen shapes are caught) and on each of ``check_batches``.
    """
    unknown = set(example_batch) - set(_INPUT_NAMES)
    missing = {"input_ids", "attention_mask"} - set(example_batch)
    if unknown or missing:
        raise ValueError(f"example_batch must hold input_ids and attention_mask (optionally token_type_ids); "
                         f"missing {sorted(missing)}, unexpected {sorted(unknown)}")
    names = [name for name in _INPUT_NAMES if name in example_batch]
    for batch in check_batches:
        if sorted(batch) != sorted(names):
            raise ValueError(f"check batch has inputs {sorted(batch)}, expected those of example_batch {names}")
    if opset < 11:
        raise ValueError(f"opset {opset} is too old: ONNX TopK's index tie-break (a stable sort) needs opset >= 11")
    example = {name: example_batch[name] for name in names}
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic_axes.update({name: {0: "batch"} for name in OUTPUT_NAMES})
    checks = [_shortest_sample(example), *({name: batch[name] for name in names} for batch in check_batches)]
    was_training = model.training
    try:
        exportable = ExportableDroppingModel(model.eval(), gate_values).eval()
        with _stable_sort_exportable(opset):
            path = export_onnx(exportable, example, path, opset=opset, output_names=list(OUTPUT_NAMES),
                               dynamic_axes=dynamic_axes, check=check, check_inputs=checks if check else (),
                               atol=atol)
    finally:
        model.train(was_training)
    logger.info("exported token-dropping ToP model to %s", path)
    return path


def quantize_pruned_dynamic(fp32_path: str | Path, out_path: str | Path) -> Path:
    """Dynamic INT8 of the exported model's linears (weights INT8, activations per batch); returns ``out_path``.

    Only ``MatMul`` nodes with a constant weight are quantized; the attention matmuls (two
    activations) and the selection ops stay in float/integer as exported.
    """
    out_path = quantize_dynamic_int8(fp32_path, out_path, op_types=("MatMul",))
    summary = quantization_summary(out_path)
    if summary.quantized.get("MatMul", 0) == 0:
        raise ValueError(f"dynamic INT8 quantized no MatMul of {fp32_path}: {summary}")
    return out_path
