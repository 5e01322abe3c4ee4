"""The MAC model of a token-pruned encoder and its Lagrangian constraint (ToP, KDD'23).

MACs of one encoder layer with n tokens entering attention and n' tokens entering the FFN
(the FFN of a layer runs on the tokens the next layer keeps, as in the reference):

    heads * (3*n*d*dh + n^2*dh + n^2 + n^2*dh) + n*d^2 + 2*n'*d*dff

(QKV projections, QK^T, softmax, attention x V per head; output projection; the two FFN matmuls;
the reference cites https://zhuanlan.zhihu.com/p/463177605). The expected sparsity of the gates is
pushed to a target by a Lagrangian lambda_1 (s - t) + lambda_2 (s - t)^2 whose multipliers are
trained by gradient *ascent* (Wang et al. 2020, "Structured Pruning of Large Language Models").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "EncoderDims",
    "LagrangianConstraint",
    "batch_mac_sparsity",
    "deployed_lengths",
    "encoder_macs",
    "expected_lengths",
    "layer_macs",
    "mac_sparsity",
]

Length = TypeVar("Length", int, float, Tensor)


@dataclass(frozen=True)
class EncoderDims:
    """Sizes of a BERT-like encoder that its MACs depend on."""

    num_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    intermediate_size: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "head_dim", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EncoderDims.{name} must be a positive int, got {value!r}")

    @classmethod
    def from_config(cls, hf_config: Any) -> EncoderDims:
        """Read the dims from a Hugging Face config (BERT, RoBERTa, ...)."""
        hidden = hf_config.hidden_size
        heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None)
        if head_dim is None:
            if hidden % heads:
                raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
            head_dim = hidden // heads
        return cls(
            num_layers=hf_config.num_hidden_layers,
            hidden_size=hidden,
            num_heads=heads,
            head_dim=head_dim,
            intermediate_size=hf_config.intermediate_size,
        )


def layer_macs(att_len: Length, ffn_len: Length, dims: EncoderDims) -> Length:
    """MACs of one encoder layer: attention on `att_len` tokens, FFN on `ffn_len` tokens."""
    n, d, dh = att_len, dims.hidden_size, dims.head_dim
    attention = dims.num_heads * (3 * n * d * dh + n * n * dh + n * n + n * n * dh) + n * d * d
    return attention + 2 * ffn_len * d * dims.intermediate_size


def encoder_macs(lengths: Tensor | Sequence[int | float], dims: EncoderDims) -> Tensor | int | float:
    """Total MACs of the encoder; lengths [..., num_layers] = tokens entering each layer.

    Layer l's FFN runs on lengths[l + 1]; the last layer's FFN on its own length (as the
    reference). Tensors give a [...] tensor; a plain sequence gives an exact Python number.
    """
    if isinstance(lengths, Tensor):
        if lengths.ndim == 0 or lengths.shape[-1] != dims.num_layers:
            raise ValueError(
                f"lengths must have a last dim of num_layers={dims.num_layers}, got shape {tuple(lengths.shape)}"
            )
        ffn = torch.cat([lengths[..., 1:], lengths[..., -1:]], dim=-1)
        return layer_macs(lengths, ffn, dims).sum(-1)
    lengths = list(lengths)
    if len(lengths) != dims.num_layers:
        raise ValueError(f"expected {dims.num_layers} lengths (one per layer), got {len(lengths)}: {lengths}")
    ffn = lengths[1:] + lengths[-1:]
    return sum(layer_macs(n, n_ffn, dims) for n, n_ffn in zip(lengths, ffn))


def expected_lengths(
    input_lengths: Tensor,
    protected: Tensor | int,
    keep_ratio: Tensor,
    prune_layers: Sequence[int],
    num_layers: int,
) -> Tensor:
    """[B, num_layers]: tokens entering each layer when location p prunes the input of layer
    prune_layers[p], keeping a fraction keep_ratio[p] of the unprotected tokens still alive.

    n_l = protected + (n_0 - protected) * prod_{p: prune_layers[p] <= l} keep_ratio[p];
    differentiable in `keep_ratio`. `protected` counts the tokens never pruned (e.g. CLS).
    """
    prune_layers = list(prune_layers)
    if keep_ratio.ndim != 1 or keep_ratio.shape[0] != len(prune_layers):
        raise ValueError(
            f"keep_ratio must be [P] with P = len(prune_layers) = {len(prune_layers)}, "
            f"got shape {tuple(keep_ratio.shape)}"
        )
    if any(not 0 <= layer < num_layers for layer in prune_layers):
        raise ValueError(f"prune_layers {prune_layers} must lie in [0, {num_layers - 1}]")
    if any(a >= b for a, b in zip(prune_layers, prune_layers[1:])):
        raise ValueError(f"prune_layers must be strictly increasing, got {prune_layers}")
    if input_lengths.ndim != 1:
        raise ValueError(f"input_lengths must be [B], got shape {tuple(input_lengths.shape)}")
    dtype = keep_ratio.dtype if keep_ratio.is_floating_point() else torch.get_default_dtype()
    n0 = input_lengths.to(dtype)
    protected = torch.as_tensor(protected, dtype=dtype, device=n0.device).expand_as(n0)
    index = torch.tensor(prune_layers, dtype=torch.long, device=keep_ratio.device)
    per_layer = torch.ones(num_layers, dtype=dtype, device=keep_ratio.device).index_copy(
        0, index, keep_ratio.to(dtype)
    )
    alive = torch.cumprod(per_layer, dim=0)
    return protected.unsqueeze(-1) + (n0 - protected).unsqueeze(-1) * alive


def deployed_lengths(
    input_lengths: Tensor,
    protected: Tensor,
    bins: Tensor,
    layers: Tensor,
    prune_layers: Sequence[int],
    num_layers: int,
) -> Tensor:
    """[B, num_layers] integer tokens entering each layer under deployed 0/1 gates, from lengths alone.

    The count a location keeps does not depend on which tokens rank where: of ``c`` candidates
    (alive, unprotected), rank ``r`` falls in bin ``floor(r * K / c)``, so bin ``b`` holds
    ``ceil((b + 1) c / K) - ceil(b c / K)`` of them and the kept count is the sum over kept bins.
    A location whose layer gate is 0 keeps everything. ``bins`` [P, K] and ``layers`` [P] are
    0/1 (``TokenGates.deterministic()``); ``protected`` [B] counts the never-pruned tokens.
    """
    prune_layers = list(prune_layers)
    if bins.ndim != 2 or bins.shape[0] != len(prune_layers) or layers.shape != (len(prune_layers),):
        raise ValueError(f"bins must be [P, K] and layers [P] with P = {len(prune_layers)}, "
                         f"got {tuple(bins.shape)} and {tuple(layers.shape)}")
    n0 = input_lengths.to(torch.long)
    fixed = protected.to(torch.long).expand_as(n0)
    bin_num = bins.shape[1]
    edges = torch.arange(bin_num + 1, dtype=torch.long, device=n0.device)
    alive, counts = n0, []
    location = {layer: p for p, layer in enumerate(prune_layers)}
    for layer in range(num_layers):
        p = location.get(layer)
        if p is not None and layers[p] > 0:
            candidates = (alive - fixed).clamp_min(0).unsqueeze(-1)
            starts = torch.div(edges * candidates + bin_num - 1, bin_num, rounding_mode="floor")  # ceil(b c / K)
            sizes = starts[:, 1:] - starts[:, :-1]
            alive = fixed + (sizes * (bins[p] > 0).to(torch.long)).sum(-1)
        counts.append(alive)
    return torch.stack(counts, dim=1)


def mac_sparsity(pruned_macs: Tensor | float, dense_macs: Tensor | float) -> Tensor | float:
    """1 - pruned / dense, elementwise (the reference averages this over a batch)."""
    return 1 - pruned_macs / dense_macs


def batch_mac_sparsity(lengths_pruned: Tensor, lengths_dense: Tensor, dims: EncoderDims) -> Tensor:
    """1 - sum_batch MACs(pruned) / sum_batch MACs(dense); lengths [B, num_layers]."""
    if lengths_pruned.shape != lengths_dense.shape:
        raise ValueError(
            f"pruned and dense lengths differ in shape: {tuple(lengths_pruned.shape)} vs {tuple(lengths_dense.shape)}"
        )
    return 1 - encoder_macs(lengths_pruned, dims).sum() / encoder_macs(lengths_dense, dims).sum()


class LagrangianConstraint(nn.Module):
    """lambda_1 (s - t) + lambda_2 (s - t)^2 with the target t ramped over `warmup_steps`.

    The gates minimise this term; the lambdas maximise it. Build their optimizer with
    `maximize=True` (see `lambda_optimizer`) and keep them out of the gates' optimizer
    (`lambda_parameters()` are this module's only parameters).
    """

    def __init__(self, target_sparsity: float, warmup_steps: int, start_sparsity: float = 0.0) -> None:
        super().__init__()
        for name, value in (("target_sparsity", target_sparsity), ("start_sparsity", start_sparsity)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.target_sparsity = target_sparsity
        self.start_sparsity = start_sparsity
        self.warmup_steps = warmup_steps
        self.lambda_1 = nn.Parameter(torch.tensor(0.0))
        self.lambda_2 = nn.Parameter(torch.tensor(0.0))

    def extra_repr(self) -> str:
        return (
            f"target_sparsity={self.target_sparsity}, start_sparsity={self.start_sparsity}, "
            f"warmup_steps={self.warmup_steps}"
        )

    def target(self, step: int) -> float:
        """Linear ramp from start to target over `warmup_steps`, constant afterwards."""
        if self.warmup_steps == 0:
            return self.target_sparsity
        progress = min(1.0, max(0, step) / self.warmup_steps)
        return self.start_sparsity + (self.target_sparsity - self.start_sparsity) * progress

    def forward(self, expected_sparsity: Tensor, step: int) -> Tensor:
        gap = expected_sparsity - self.target(step)
        return self.lambda_1 * gap + self.lambda_2 * gap * gap

    def lambda_parameters(self) -> list[nn.Parameter]:
        return [self.lambda_1, self.lambda_2]

    def lambda_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """AdamW over the lambdas doing gradient ascent (maximize=True), no weight decay.

        The reference gets ascent from a negative learning rate; `maximize` is the same update.
        """
        return torch.optim.AdamW(self.lambda_parameters(), lr=lr, weight_decay=0.0, maximize=True)
