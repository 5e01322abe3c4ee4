"""Token pruning plugged into a Hugging Face BERT-family classifier (ToP §3, §4).

:class:`ToPModel` runs an unmodified ``BertForSequenceClassification`` or
``RobertaForSequenceClassification`` layer by layer through its own submodules (Q/K/V linears,
attention output, intermediate, output, pooler/classifier) — no copied modeling file — and adds,
between layers, the token-pruning decision:

* after the attention of layer ``l - 1``, every token still alive gets a score (``ranking``), the
  prunable ones are ranked, the rank maps to a bin, and the bin's gate (hard concrete in
  training, 0/1 in evaluation) times the location's layer gate decides whether the token enters
  layer ``l``. Once pruned, always pruned; protected tokens (CLS, and SEP unless in reference
  mode) are always kept.
* a pruned token leaves the computation: it is masked out as a key of every later attention, so
  nothing that is kept (in particular CLS, which the classifier reads) depends on it. That is
  exactly what physically dropping it computes, and the FFN of layer ``l - 1`` only needs the
  tokens that layer ``l`` keeps — which is why the MAC model charges that FFN with the next
  layer's length.

Training uses the same semantics with soft keep values: a key's attention logit gets ``log(k)``,
so its unnormalised attention weight is multiplied by ``k`` (0 → excluded, 1 → untouched). The
reference instead scales hidden states by ``k`` and leaves the attention mask alone during
training, then masks attention at inference (flaw 4); ``PruningConfig.reference_semantics()``
reproduces that for its released checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .constraint import EncoderDims, encoder_macs
from .masks import GateValues, TokenGates, rank_to_bin
from .ranking import candidate_ranks, token_scores


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    """Where and how tokens are pruned.

    ``prune_layers`` are the layers whose *input* is pruned (the reference's ``token_prune_loc``;
    layer 0 never prunes). ``special_token_ids`` are kept at every layer when ``protect_special``;
    CLS (position 0) is always kept.
    """

    prune_layers: tuple[int, ...]
    bin_num: int
    special_token_ids: tuple[int, ...] = ()
    protect_special: bool = True
    score_rows: str = "valid"  # "valid" (padding-independent) | "all" (reference)
    soft_attention_mask: bool = True  # keep values enter attention as log-bias (ours)
    scale_hidden: bool = False  # reference: multiply hidden states by keep values in training
    # Expected MAC sparsity of a training batch: 1 - sum(MACs) / sum(dense MACs) ("ratio_of_sums"),
    # or the mean over samples of each sample's sparsity ("mean_of_ratios", the reference).
    batch_sparsity: str = "ratio_of_sums"

    def __post_init__(self) -> None:
        if self.batch_sparsity not in ("ratio_of_sums", "mean_of_ratios"):
            raise ValueError(f"batch_sparsity must be 'ratio_of_sums' or 'mean_of_ratios', "
                             f"got {self.batch_sparsity!r}")
        if not self.prune_layers:
            raise ValueError("prune_layers is empty: name at least one layer whose input is pruned")
        if min(self.prune_layers) < 1:
            raise ValueError(f"layer 0 cannot be pruned (its scores would need a layer -1): {self.prune_layers}")
        if list(self.prune_layers) != sorted(set(self.prune_layers)):
            raise ValueError(f"prune_layers must be strictly increasing, got {self.prune_layers}")
        if self.bin_num < 1:
            raise ValueError(f"bin_num must be >= 1, got {self.bin_num}")

    @classmethod
    def reference_semantics(cls, prune_layers: Sequence[int], bin_num: int) -> PruningConfig:
        """The reference implementation's behaviour (for its released checkpoints and comparisons)."""
        return cls(tuple(prune_layers), bin_num, protect_special=False, score_rows="all",
                   soft_attention_mask=False, scale_hidden=True, batch_sparsity="mean_of_ratios")


@dataclasses.dataclass
class ToPOutput:
    """What one forward pass computed.

    ``keep`` holds, per layer, the keep values of the tokens entering it ([B, T], 0 = pruned);
    ``scores`` per layer the token scores from that layer's attention ([B, T]); ``kept_counts``
    the tokens each sample really feeds each layer ([B, L], CLS and protected ones included).
    """

    logits: torch.Tensor
    keep: list[torch.Tensor]
    scores: list[torch.Tensor]
    kept_counts: torch.Tensor
    input_lengths: torch.Tensor
    protected: torch.Tensor  # [B, T] tokens never pruned (CLS, SEP)

    @property
    def protected_counts(self) -> torch.Tensor:
        return self.protected.sum(dim=1)


class ToPModel(nn.Module):
    """A HF sequence classifier with ToP's token pruning; ``gates=None`` runs it dense."""

    def __init__(self, hf_model: nn.Module, pruning: PruningConfig | None = None, gates: TokenGates | None = None):
        super().__init__()
        base_prefix = getattr(hf_model, "base_model_prefix", None)
        base = getattr(hf_model, base_prefix, None) if base_prefix else None
        if base is None or not hasattr(base, "encoder") or not hasattr(base, "embeddings"):
            raise ValueError(f"{type(hf_model).__name__} is not a BERT-family sequence classifier "
                             "(expected .<base>.embeddings and .<base>.encoder.layer)")
        self.hf_model = hf_model
        self.base = base
        self.dims = EncoderDims.from_config(hf_model.config)
        if pruning is not None:
            if max(pruning.prune_layers) >= self.dims.num_layers:
                raise ValueError(f"prune_layers {pruning.prune_layers} name layers beyond the model's "
                                 f"{self.dims.num_layers} layers")
            if gates is not None and tuple(gates.bin_log_alpha.shape) != (len(pruning.prune_layers), pruning.bin_num):
                raise ValueError(f"gates have shape {tuple(gates.bin_log_alpha.shape)}, expected "
                                 f"({len(pruning.prune_layers)}, {pruning.bin_num}) for {pruning}")
        self.pruning = pruning
        self.gates = gates
        # "attention" ranks tokens by ToP's scores; "random" is the random-pruning baseline, which
        # keeps exactly as many tokens per sample and layer (counts depend on ranks' count only).
        self.rank_source = "attention"
        self.random_generator: torch.Generator | None = None

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.encoder.layer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        gate_values: GateValues | None = None,
        prune: bool = True,
    ) -> ToPOutput:
        """Classify; prune tokens when ``prune`` and gates exist (``gate_values`` overrides the gates' own)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        valid = attention_mask.bool()
        protected = self._protected(input_ids, valid)
        pruning = self.pruning if (prune and self.pruning is not None) else None
        if pruning is not None and gate_values is None:
            if self.gates is None:
                raise ValueError("this ToPModel has no gates: pass gate_values or prune=False")
            gate_values = self.gates()
        location_of = {layer: p for p, layer in enumerate(pruning.prune_layers)} if pruning else {}

        hidden = self.base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        keep = valid.to(hidden.dtype)
        keeps, scores, counts = [], [], []
        for index, layer in enumerate(self.layers):
            if index in location_of:
                keep = self._next_keep(keep, scores[-1], protected, gate_values, location_of[index], pruning)
                if pruning.scale_hidden:
                    hidden = hidden * keep.unsqueeze(-1)
            keeps.append(keep)
            counts.append((keep > 0).sum(dim=1))
            hidden, probs = self._layer(layer, hidden, self._key_bias(keep, valid, pruning, hidden.dtype))
            rows = (keep > 0) if pruning is None or pruning.score_rows == "valid" else None
            scores.append(token_scores(probs, rows, "valid" if rows is not None else "all"))
        logits = self._classify(hidden)
        return ToPOutput(logits=logits, keep=keeps, scores=scores, kept_counts=torch.stack(counts, dim=1),
                         input_lengths=valid.sum(dim=1), protected=protected)

    # -- pieces -------------------------------------------------------------------------------

    def _protected(self, input_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        protected = torch.zeros_like(valid)
        protected[:, 0] = True  # CLS / <s>
        if self.pruning is not None and self.pruning.protect_special and self.pruning.special_token_ids:
            special = torch.tensor(self.pruning.special_token_ids, device=input_ids.device)
            # Not torch.isin / in-place |=: neither has an ONNX export (export.py traces this method).
            protected = protected | (input_ids.unsqueeze(-1) == special).any(dim=-1)
        return protected & valid

    def _next_keep(self, keep: torch.Tensor, scores: torch.Tensor, protected: torch.Tensor, gates: GateValues,
                   location: int, pruning: PruningConfig) -> torch.Tensor:
        alive = keep > 0
        candidates = alive & ~protected
        if self.rank_source == "random":  # baseline: same kept counts, tokens chosen at random
            scores = torch.rand(scores.shape, generator=self.random_generator, device=scores.device)
        ranks, count = candidate_ranks(scores.detach(), candidates)
        bins = rank_to_bin(ranks, count, pruning.bin_num)
        bin_values = torch.cat([gates.bins[location], gates.bins.new_zeros(1)])  # index bin_num = "dropped"
        bin_keep = bin_values[bins]
        layer_gate = gates.layers[location]
        new_keep = (1.0 - (1.0 - bin_keep) * layer_gate) * alive.to(bin_keep.dtype)
        return torch.where(protected, torch.ones_like(new_keep), new_keep)

    def _layer(self, layer: nn.Module, hidden: torch.Tensor, key_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoder layer from its HF submodules; returns (output, attention probabilities)."""
        attended, probs = self._attention(layer, hidden, key_bias)
        return self._feed_forward(layer, attended), probs

    def _attention(self, layer: nn.Module, hidden: torch.Tensor,
                   key_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's attention block (self-attention + output projection + residual/LayerNorm).

        Returns (attended hidden states, attention probabilities). Split from the FFN so that
        token dropping (``inference``) can gather the kept tokens in between.
        """
        attention = layer.attention.self
        batch, length, _ = hidden.shape
        heads, head_dim = self.dims.num_heads, self.dims.head_dim

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, heads, head_dim).transpose(1, 2)

        query, key, value = split(attention.query(hidden)), split(attention.key(hidden)), split(attention.value(hidden))
        logits = torch.matmul(query, key.transpose(-1, -2)) * head_dim ** -0.5
        logits = logits + key_bias
        probs = F.softmax(logits, dim=-1)
        context = torch.matmul(attention.dropout(probs), value).transpose(1, 2).reshape(batch, length, heads * head_dim)
        return layer.attention.output(context, hidden), probs

    @staticmethod
    def _feed_forward(layer: nn.Module, attended: torch.Tensor) -> torch.Tensor:
        """A layer's FFN block (intermediate + output projection + residual/LayerNorm), per token."""
        return layer.output(layer.intermediate(attended), attended)

    def _key_bias(self, keep: torch.Tensor, valid: torch.Tensor, pruning: PruningConfig | None,
                  dtype: torch.dtype) -> torch.Tensor:
        """Additive attention bias per key ([B, 1, 1, T]): 0 kept, a huge negative for pruned keys.

        With soft keep values (training) a key gets ``log(k)``. The reference's training leaves
        the attention mask as it was (only padding masked) and scales hidden states instead.
        """
        floor = torch.finfo(dtype).min
        if pruning is not None and not pruning.soft_attention_mask and self.training:
            present = valid
        else:
            present = keep > 0
        bias = torch.where(present, torch.zeros_like(keep), torch.full_like(keep, floor))
        if pruning is not None and pruning.soft_attention_mask:
            bias = torch.where(present, torch.log(keep.clamp_min(1e-30)), bias)
        return bias[:, None, None, :].to(dtype)

    def _classify(self, hidden: torch.Tensor) -> torch.Tensor:
        model = self.hf_model
        pooler = getattr(self.base, "pooler", None)
        if pooler is not None and hasattr(model, "dropout"):  # BERT: pooler → dropout → linear
            return model.classifier(model.dropout(pooler(hidden)))
        return model.classifier(hidden)  # RoBERTa: its head reads the <s> token itself

    # -- accounting ---------------------------------------------------------------------------

    def macs(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder MACs for per-layer token counts ``[..., L]`` (the ToP MAC model, this model's dims)."""
        return encoder_macs(lengths, self.dims)


def measured_mac_sparsity(output: ToPOutput, dims: EncoderDims, padded_length: int | None = None) -> dict[str, Any]:
    """MAC sparsity of what the forward pass really kept, against unpadded (and padded) dense input."""
    kept = output.kept_counts.to(torch.float64)
    dense = output.input_lengths.to(torch.float64).unsqueeze(1).expand_as(kept)
    pruned_macs = encoder_macs(kept, dims).sum()
    dense_macs = encoder_macs(dense, dims).sum()
    result = {"pruned_macs": float(pruned_macs), "dense_macs": float(dense_macs),
              "mac_sparsity": float(1.0 - pruned_macs / dense_macs),
              "flops_reduction": float(dense_macs / pruned_macs)}
    if padded_length is not None:
        padded = torch.full_like(kept, float(padded_length))
        padded_macs = encoder_macs(padded, dims).sum()
        result["padded_macs"] = float(padded_macs)
        result["flops_reduction_vs_padded"] = float(padded_macs / pruned_macs)
    return result
