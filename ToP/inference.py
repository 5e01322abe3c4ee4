"""Physical token dropping for ToP inference (ToP §4, deployment; fixes flaw 1 of the reference).

The reference only masks pruned tokens out of attention at inference, so every layer still runs
on the full padded length and nothing gets faster. Here a pruned token really leaves the tensor:
after the attention block of layer ``l - 1`` — whose attention probabilities give the scores that
decide what layer ``l`` keeps — the kept tokens of each sample are gathered, left-aligned (CLS
stays first, original order is preserved), and the batch is padded to its largest kept count
with an attention mask. The FFN of layer ``l - 1`` then runs on the tokens layer ``l`` keeps,
which is what the ToP MAC model charges (``constraint.layer_macs``: FFN on the next layer's length).

The result equals :class:`~moonlit.top.model.ToPModel` in eval mode (its masked semantics) with
the same gates: the scores are computed the same way (mean attention received over the valid kept
query rows, padding excluded), and the decision reuses the model's own ranking/bin/gate step.
Only the padding-independent scores (``score_rows="valid"``) can be reproduced: the reference's
``"all"`` averages over the query rows of pruned and padding tokens, which dropping removes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from .masks import GateValues
from .model import ToPModel
from .ranking import token_scores

__all__ = ["DroppedEncoderOutput", "DroppedOutput", "TokenDroppingEncoder", "TokenDroppingModel", "run_dropping_layers"]


@dataclasses.dataclass
class DroppedEncoderOutput:
    """What the dropping encoder computed.

    ``hidden`` [B, n, d] and ``attention_mask`` [B, n] (bool) are the last layer's output over the
    tokens it kept, left-aligned; ``kept_counts`` [B, L] the tokens each sample feeds each layer;
    ``positions[l]`` [B, n_l] the original positions of the tokens entering layer ``l`` (-1 in
    padding slots), ``n_l`` being the batch's largest kept count at that layer.
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    kept_counts: torch.Tensor
    positions: list[torch.Tensor]


@dataclasses.dataclass
class DroppedOutput:
    """Logits, per-sample per-layer kept counts [B, L], and (if asked) kept original positions."""

    logits: torch.Tensor
    kept_counts: torch.Tensor
    kept_positions: list[torch.Tensor] | None = None


def _left_aligned_order(keep: torch.Tensor) -> torch.Tensor:
    """[B, n'] indices that gather each row's kept entries first, in order; n' = largest kept count.

    Slots past a row's own count point at dropped tokens; the caller masks them as padding.
    """
    width = max(int(keep.sum(dim=1).max()), 1)
    # A stable descending sort of the 0/1 flags moves kept tokens to the front without reordering them.
    return torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]


def run_dropping_layers(
    top: ToPModel,
    hidden: torch.Tensor,
    present: torch.Tensor,
    protected: torch.Tensor,
    gates: GateValues | None,
    location_after: dict[int, int],
    order_kept: Callable[[torch.Tensor], torch.Tensor],
    positions: torch.Tensor | None = None,
) -> DroppedEncoderOutput:
    """The layer loop shared by eager dropping and the ONNX export (which passes a trace-safe ``order_kept``).

    After the attention of layer ``l`` (a key of ``location_after``), the tokens the next layer keeps
    are gathered in the order ``order_kept(keep)`` gives ([B, n'] indices, kept first), before the FFN.
    ``positions`` [B, T] (original position, -1 for padding) is carried along when given.
    """
    counts, kept_positions = [], []
    for index, layer in enumerate(top.layers):
        counts.append(present.sum(dim=1))
        if positions is not None:
            kept_positions.append(positions)
        key_bias = top._key_bias(present.to(hidden.dtype), present, top.pruning, hidden.dtype)
        attended, probs = top._attention(layer, hidden, key_bias)
        location = location_after.get(index)
        if location is not None:
            scores = token_scores(probs, present, "valid")
            keep = top._next_keep(present.to(probs.dtype), scores, protected, gates, location, top.pruning) > 0
            order = order_kept(keep)
            attended = attended.gather(1, order.unsqueeze(-1).expand(-1, -1, attended.shape[-1]))
            present, protected = keep.gather(1, order), protected.gather(1, order)
            if positions is not None:
                positions = positions.gather(1, order).masked_fill(~present, -1)
        hidden = top._feed_forward(layer, attended)
    return DroppedEncoderOutput(hidden=hidden, attention_mask=present, kept_counts=torch.stack(counts, dim=1),
                                positions=kept_positions)


class TokenDroppingEncoder(nn.Module):
    """The encoder layers of a :class:`ToPModel`, shrinking the hidden states at each pruning location.

    Takes the embeddings' output; embeddings and the classifier head are outside (they are outside
    the ToP MAC model too), so counting this module's MACs gives the encoder's alone.
    """

    def __init__(self, top: ToPModel) -> None:
        super().__init__()
        if not isinstance(top, ToPModel):
            raise ValueError(f"expected a ToPModel, got {type(top).__name__}")
        pruning = top.pruning
        if pruning is not None and pruning.score_rows != "valid":
            raise ValueError(f"physical dropping needs score_rows='valid', got {pruning.score_rows!r}: the "
                             "reference's 'all' averages over pruned and padding query rows, which are dropped")
        self.top = top
        # Scores of layer l - 1 decide the input of layer l, so the gather follows layer l - 1's attention.
        self._location_after = {layer - 1: p for p, layer in enumerate(pruning.prune_layers)} if pruning else {}

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        protected: torch.Tensor,
        gate_values: GateValues | None = None,
    ) -> DroppedEncoderOutput:
        """Run the layers on ``hidden`` [B, T, d]; ``protected`` [B, T] marks tokens never pruned."""
        top = self.top
        if top.training or top.hf_model.training:
            raise RuntimeError("token dropping reproduces eval-mode ToP only (no dropout, 0/1 gates): call .eval()")
        if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2] or protected.shape != hidden.shape[:2]:
            raise ValueError(f"expected hidden [B, T, d] with attention_mask and protected [B, T], got "
                             f"{tuple(hidden.shape)}, {tuple(attention_mask.shape)}, {tuple(protected.shape)}")
        gates = self._gate_values(gate_values)
        present = attention_mask.bool()
        protected = protected.bool() & present
        batch, length = present.shape
        positions = torch.arange(length, device=hidden.device).expand(batch, length)
        return run_dropping_layers(top, hidden, present, protected, gates, self._location_after,
                                   _left_aligned_order, positions=positions.masked_fill(~present, -1))

    def _gate_values(self, gate_values: GateValues | None) -> GateValues | None:
        """The 0/1 gates to apply: the given ones, or the model's own deterministic (eval) gates."""
        pruning = self.top.pruning
        if pruning is None:
            return None
        if gate_values is None:
            if self.top.gates is None:
                raise ValueError("this ToPModel has no gates: pass gate_values")
            gate_values = self.top.gates()
        expected = (len(pruning.prune_layers), pruning.bin_num)
        if tuple(gate_values.bins.shape) != expected or tuple(gate_values.layers.shape) != expected[:1]:
            raise ValueError(f"gate values have bins {tuple(gate_values.bins.shape)} and layers "
                             f"{tuple(gate_values.layers.shape)}, expected {expected} and {expected[:1]}")
        for name, values in (("bins", gate_values.bins), ("layers", gate_values.layers)):
            if not bool(((values == 0) | (values == 1)).all()):
                raise ValueError(f"physical dropping needs 0/1 gate values, got {name} = {values.tolist()}")
        return gate_values


class TokenDroppingModel(nn.Module):
    """A :class:`ToPModel` classifier that drops pruned tokens physically; same logits in eval mode.

    >>> dropping = TokenDroppingModel(top).eval()
    >>> out = dropping(**tokenizer(texts, padding=True, return_tensors="pt"), return_positions=True)
    """

    def __init__(self, top: ToPModel) -> None:
        super().__init__()
        self.encoder = TokenDroppingEncoder(top)

    @property
    def top(self) -> ToPModel:
        return self.encoder.top

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        gate_values: GateValues | None = None,
        return_positions: bool = False,
    ) -> DroppedOutput:
        """Classify; ``gate_values`` (0/1) overrides the model's own deterministic gates."""
        top = self.top
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        valid = attention_mask.bool()
        hidden = top.base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        encoded = self.encoder(hidden, valid, top._protected(input_ids, valid), gate_values)
        return DroppedOutput(logits=top._classify(encoded.hidden), kept_counts=encoded.kept_counts,
                             kept_positions=encoded.positions if return_positions else None)
