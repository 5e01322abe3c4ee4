"""MACs and parameter counts of any ``nn.Module`` for given inputs.

Used by every paper for its complexity columns (ToP's MAC constraint, SpaceEvo/ElasticViT's FLOPs
tables). The counting is torch's own :class:`torch.utils.flop_counter.FlopCounterMode`: it
applies a shape formula to each aten op that has one in ``torch.utils.flop_counter.flop_registry``
(the matmul/conv/attention family) and attributes it to every module on the call stack.

What we add on top: MACs (= FLOPs / 2, since torch counts one multiply-accumulate as two FLOPs
for that whole family), parameter counts, a per-module table keyed like ``named_modules()``, and
a list of the ops that ran without a FLOP formula (BN, activations, softmax, elementwise adds,
pooling…) so a reader sees what the number leaves out, in the spirit of fvcore's
"unsupported operators" report. Pure data movement (views, reshapes, copies, lookups, tensor
creation) is free and not listed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

__all__ = ["ComplexityReport", "count_macs", "measure_complexity", "FREE_OPS"]

# Ops that move, view, create or look up data without arithmetic; they are not reported as
# uncounted. Names are str(OpOverloadPacket), e.g. "aten.view".
FREE_OPS: frozenset[str] = frozenset(
    "aten." + name
    for name in (
        # views and reshapes
        "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "alias", "expand",
        "expand_as", "t", "transpose", "permute", "squeeze", "unsqueeze", "flatten", "unflatten",
        "slice", "select", "narrow", "split", "split_with_sizes", "chunk", "unbind", "view_as",
        "detach", "diagonal", "unfold", "movedim", "_unsafe_split", "_unsafe_index",
        # copies and layout
        "clone", "contiguous", "copy_", "copy", "_to_copy", "to", "lift_fresh", "lift_fresh_copy",
        "cat", "stack", "pad", "constant_pad_nd", "repeat", "roll", "flip", "tile",
        # creation
        "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full",
        "full_like", "new_zeros", "new_ones", "new_empty", "new_empty_strided", "new_full",
        "arange", "scalar_tensor", "fill_", "fill", "zero_", "_local_scalar_dense", "item",
        # lookups (gathers: memory traffic, no arithmetic)
        "embedding", "index_select", "gather", "index", "take", "masked_select",
    )
) | {"prim.device", "prim.layout"}


def _formulas_missing_from_torch() -> dict[Any, Any]:
    """FLOP formulas that newer torch releases register and older supported ones (2.11) lack.

    torch 2.11 has no entry for the CPU flash-attention kernel that ``scaled_dot_product_attention``
    dispatches to on CPU, so attention would silently count as zero. The formulas are torch's own
    shape functions (``sdpa_flop_count``), applied to the same ops.
    """
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    extra: dict[Any, Any] = {}
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if forward is not None and forward not in flop_registry:
        extra[forward] = lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if backward is not None and backward not in flop_registry:
        extra[backward] = (lambda grad, q, k, v, *args, out_shape=None, **kwargs:
                           sdpa_backward_flop_count(grad, q, k, v))
    return extra


@dataclasses.dataclass(frozen=True)
class ComplexityReport:
    """Complexity of one forward pass.

    ``macs_by_module`` is keyed like ``model.named_modules()`` (``"layer1"``, ``"layer1.0.conv1"``)
    and holds every submodule that did counted work; a module called several times holds the sum.
    ``uncounted_ops`` maps aten op name → number of calls for ops that ran without a FLOP formula.
    """

    macs: int
    params: int
    flops: int
    macs_by_op: dict[str, int]
    macs_by_module: dict[str, int]
    uncounted_ops: dict[str, int]

    def top_level(self) -> dict[str, int]:
        """MACs of the model's direct children only (names without a dot)."""
        return {name: macs for name, macs in self.macs_by_module.items() if "." not in name}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _OpRecorder(TorchDispatchMode):
    """Counts every aten op that actually executes.

    Entered *outside* the FlopCounterMode, so it sees ops after FlopCounterMode has tried to
    decompose them: exactly the ops whose packets were (or were not) looked up in the registry.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        packet = getattr(func, "_overloadpacket", func)
        self.calls[str(packet)] += 1
        return func(*args, **(kwargs or {}))


def _module_names(model: nn.Module) -> dict[str, int]:
    """Qualified submodule names in ``named_modules`` order (used to sort the per-module table)."""
    return {name: index for index, (name, _) in enumerate(model.named_modules()) if name}


def measure_complexity(
    model: nn.Module,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    eval_mode: bool = True,
    no_grad: bool = True,
) -> ComplexityReport:
    """Run ``model(*args, **kwargs)`` once and report its MACs, parameters and skipped ops.

    ``eval_mode`` puts the model in eval mode for the pass (the previous train/eval state of every
    submodule is restored afterwards); ``no_grad`` runs it under ``torch.no_grad()``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    kwargs = kwargs or {}
    previous_modes = {module: module.training for module in model.modules()}
    recorder = _OpRecorder()
    extra_formulas = _formulas_missing_from_torch()
    counter = FlopCounterMode(display=False, custom_mapping=extra_formulas)
    try:
        if eval_mode:
            model.eval()
        grad_context = torch.no_grad() if no_grad else torch.enable_grad()
        with grad_context, recorder, counter:
            model(*args, **kwargs)
    finally:
        for module, training in previous_modes.items():
            module.training = training

    counts = counter.get_flop_counts()
    flops_by_op = {str(op): int(flops) for op, flops in counts.get("Global", {}).items()}
    macs_by_op = {op: flops // 2 for op, flops in flops_by_op.items()}

    # FlopCounterMode names the root by its class ("ResNet") and children "ResNet.layer1".
    root = type(model).__name__
    order = _module_names(model)
    macs_by_module: dict[str, int] = {}
    for tracked_name, per_op in counts.items():
        if not tracked_name.startswith(root + "."):
            continue
        name = tracked_name[len(root) + 1 :]
        macs_by_module[name] = sum(int(flops) // 2 for flops in per_op.values())
    macs_by_module = dict(
        sorted(macs_by_module.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    )

    registry_names = {str(op) for op in (*flop_registry, *extra_formulas)}
    uncounted = {
        op: calls
        for op, calls in sorted(recorder.calls.items())
        if op not in registry_names and op not in FREE_OPS
    }
    total_flops = sum(flops_by_op.values())
    params = sum(parameter.numel() for parameter in model.parameters())
    return ComplexityReport(
        macs=sum(macs_by_op.values()),
        params=int(params),
        flops=int(total_flops),
        macs_by_op=macs_by_op,
        macs_by_module=macs_by_module,
        uncounted_ops=uncounted,
    )


def count_macs(model: nn.Module, *inputs: Any, **kw_inputs: Any) -> ComplexityReport:
    """MACs and parameters of ``model(*inputs, **kw_inputs)`` in eval mode under ``no_grad``.

    >>> report = count_macs(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))
    >>> report.macs  # 1_814_073_344 (torchvision's documented 1.81 GFLOPS counts MACs)
    """
    return measure_complexity(model, inputs, kw_inputs)
