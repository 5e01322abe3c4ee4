"""Hard-concrete L0 gates over token-rank bins (ToP, KDD'23: rank-based token pruning).

The gates are the hard-concrete distribution of Louizos et al., "Learning Sparse Neural Networks
through L0 Regularization" (ICLR'18): a binary-concrete sample stretched to (-0.1, 1.1)
and clipped to [0, 1], so exact zeros and ones occur with non-zero probability while the sample
stays differentiable in its log-alpha.

ToP gives every pruning location `bin_num` gates, one per rank bin (bin 0 holds the
highest-ranked tokens), and one per-location gate that decides whether the location prunes at all.
`TokenGates(monotone=True)` fixes a flaw of the reference: there, bins are independent, so a
top-ranked bin can be dropped while a lower one is kept; here a bin is kept only if every
better-ranked bin is kept as well. `monotone=False` reproduces the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "DETERMINISTIC_RULES",
    "EPS",
    "LIMIT_HIGH",
    "LIMIT_LOW",
    "LOG_ALPHA_MAX",
    "LOG_ALPHA_MIN",
    "MAGICAL_NUMBER",
    "TEMPERATURE",
    "GateValues",
    "TokenGates",
    "deterministic_gates",
    "hard_concrete_sample",
    "keep_ratio",
    "prob_nonzero",
    "rank_to_bin",
]

# Stretch interval (gamma, zeta) and temperature beta from Louizos et al. 2018 (their recommended values).
LIMIT_LOW = -0.1
LIMIT_HIGH = 1.1
TEMPERATURE = 2.0 / 3.0
EPS = 1e-6
# The reference clamps log-alphas to [ln 0.01, ln 100] after every optimizer step.
LOG_ALPHA_MIN = math.log(1e-2)
LOG_ALPHA_MAX = math.log(1e2)
# Eval-time ranking scale of the reference, taken from Wang et al. 2020 (FLOP, asappresearch).
MAGICAL_NUMBER = 0.8
DETERMINISTIC_RULES = ("threshold", "match_expected")


def hard_concrete_sample(
    log_alpha: Tensor, temperature: float = TEMPERATURE, generator: torch.Generator | None = None
) -> Tensor:
    """One hard-concrete draw per entry of `log_alpha`, differentiable in `log_alpha`.

    u ~ U(eps, 1 - eps); s = sigmoid((log u - log(1 - u) + log_alpha) / beta);
    z = clamp(s * (zeta - gamma) + gamma, 0, 1).
    """
    u = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype, device=log_alpha.device)
    u = u * (1.0 - 2.0 * EPS) + EPS
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / temperature)
    return (s * (LIMIT_HIGH - LIMIT_LOW) + LIMIT_LOW).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """P(z > 0) = 1 - CDF(0) of the hard-concrete distribution, in closed form.

    The stretched sample is <= 0 iff s <= -gamma / (zeta - gamma), which gives
    CDF(0) = sigmoid(beta * log(-gamma / zeta) - log_alpha). Clamped to [eps, 1 - eps] like the
    reference.
    """
    shift = temperature * math.log(-LIMIT_LOW / LIMIT_HIGH)
    return torch.sigmoid(log_alpha - shift).clamp(EPS, 1.0 - EPS)


def _keep_highest(score: Tensor, num_kept: Tensor) -> Tensor:
    """0/1 per row of the last dim: 1 for the `num_kept` [..., 1] entries with the highest score.

    Ties go to the earlier index.
    """
    descending_rank = torch.argsort(score, dim=-1, descending=True, stable=True).argsort(dim=-1)
    return (descending_rank < num_kept).to(score.dtype)


def _keep_highest_as_topk(score: Tensor, num_kept: Tensor) -> Tensor:
    """:func:`_keep_highest` with the reference's tie order: each 1-D row zeroes the entries
    ``torch.topk(row, k, largest=False)`` returns, k = size - kept, whatever order it gives
    exactly equal scores (a row of equal scores that keeps one keeps neither its first nor its last).
    """
    size = score.shape[-1]
    rows = score.reshape(-1, size)
    zeros = (size - num_kept.reshape(-1)).long()
    gates = torch.ones_like(rows)
    for row, values in enumerate(rows):
        k = int(zeros[row])
        if k > 0:
            gates[row, torch.topk(values, k=k, largest=False).indices] = 0.0
    return gates.reshape(score.shape)


def deterministic_gates(
    log_alpha: Tensor,
    temperature: float = TEMPERATURE,
    magical_number: float = MAGICAL_NUMBER,
    *,
    elementwise: bool = False,
) -> Tensor:
    """Eval-time 0/1 gates of the reference, each row of the last dim on its own.

    In a row of size B, round(B - sum P(z > 0)) entries are zeroed (rounding half to even, as
    Python's `round` in the reference): those with the smallest sigmoid(log_alpha / beta * 0.8),
    chosen among equal scores as the reference's ``torch.topk`` chooses; the others are 1. A
    0-dim `log_alpha` is a single gate (1 iff P(z > 0) >= 0.5, ties at 0.5 keep), and
    `elementwise=True` treats every entry that way (e.g. the per-location gates [L]).
    """
    if magical_number <= 0:
        raise ValueError(f"magical_number must be > 0 (it scales a ranking score), got {magical_number}")
    log_alpha = log_alpha.detach()
    single = log_alpha.ndim == 0 or elementwise
    rows = log_alpha.unsqueeze(-1) if single else log_alpha
    size = rows.shape[-1]
    num_zeros = torch.round(size - prob_nonzero(rows, temperature).sum(-1, keepdim=True))
    gates = _keep_highest_as_topk(torch.sigmoid(rows / temperature * magical_number), size - num_zeros)
    return gates.squeeze(-1) if single else gates


@dataclass
class GateValues:
    """Keep values of one forward of `TokenGates`.

    bins: [num_locations, bin_num], keep value of each rank bin in [0, 1] (bin 0 = best tokens).
    layers: [num_locations], 1 = "this location prunes", 0 = "it keeps every token".
    """

    bins: Tensor
    layers: Tensor


def keep_ratio(gates: GateValues) -> Tensor:
    """Fraction of the alive tokens each location keeps: 1 - (1 - mean_b bins) * layers.

    Applied to probabilities (`TokenGates.keep_probabilities`) this is the expected keep ratio of
    the reference's constraint; applied to eval-time 0/1 gates it is the deployed ratio.
    """
    return 1.0 - (1.0 - gates.bins.mean(-1)) * gates.layers


class TokenGates(nn.Module):
    """Hard-concrete gates for `num_locations` pruning locations with `bin_num` rank bins each.

    Training mode: `forward()` samples the bins and a straight-through hard per-location gate
    (forward value 1[z > 0], gradient of the soft z). Eval mode: deterministic 0/1 gates.
    With `monotone=True` bin keep values are non-increasing in the bin index.

    `deterministic_rule` picks the eval gates:
    - "threshold" (the reference's rule): a location prunes iff P(gate on) >= 0.5; its bins
      follow `deterministic_gates` (monotone: the first round(sum_b P_b) bins are kept).
    - "match_expected": location l keeps round(bin_num * rho_l) bins, rho_l being
      `expected_keep_ratio()`, and prunes iff that is fewer than all. The deployed keep ratio
      then equals the one the constraint trained, up to 1 / (2 * bin_num); with "threshold",
      locations whose gate probability sits near 0.5 can make the two differ by a lot.
    """

    def __init__(
        self,
        num_locations: int,
        bin_num: int,
        *,
        bin_init: float = 10.0,
        layer_init: float = -10.0,
        init_std: float = 0.01,
        temperature: float = TEMPERATURE,
        magical_number: float = MAGICAL_NUMBER,
        monotone: bool = True,
        deterministic_rule: str = "threshold",
    ) -> None:
        super().__init__()
        if num_locations < 1:
            raise ValueError(f"num_locations must be >= 1, got {num_locations}")
        if bin_num < 1:
            raise ValueError(f"bin_num must be >= 1, got {bin_num}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if deterministic_rule not in DETERMINISTIC_RULES:
            raise ValueError(f"deterministic_rule {deterministic_rule!r} is not one of {DETERMINISTIC_RULES}")
        self.num_locations = num_locations
        self.bin_num = bin_num
        self.temperature = temperature
        self.magical_number = magical_number
        self.monotone = monotone
        self.deterministic_rule = deterministic_rule
        # Reference init: bins near 10 (kept), location gates near -10 (no pruning yet).
        self.bin_log_alpha = nn.Parameter(torch.randn(num_locations, bin_num) * init_std + bin_init)
        self.layer_log_alpha = nn.Parameter(torch.randn(num_locations) * init_std + layer_init)
        # Kept bins per location for deployment, set by calibration (-1 = follow the rule above).
        self.register_buffer("deployed_kept_bins", torch.full((num_locations,), -1, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"num_locations={self.num_locations}, bin_num={self.bin_num}, monotone={self.monotone}, "
            f"deterministic_rule={self.deterministic_rule!r}"
        )

    def forward(self, generator: torch.Generator | None = None) -> GateValues:
        if self.training:
            bins = hard_concrete_sample(self.bin_log_alpha, self.temperature, generator)
            if self.monotone:
                bins = torch.cumprod(bins, dim=-1)
            soft = hard_concrete_sample(self.layer_log_alpha, self.temperature, generator)
            # Straight-through: the value is exactly 1[z > 0], the gradient is that of z.
            layers = (soft > 0).to(soft.dtype) + (soft - soft.detach())
            return GateValues(bins=bins, layers=layers)
        return self.deterministic()

    @torch.no_grad()
    def deterministic(self) -> GateValues:
        """Eval-time 0/1 gates (what `forward()` returns in eval mode), without gradients.

        Locations with a calibrated ``deployed_kept_bins`` (>= 0) keep exactly that many bins
        (the highest-ranked ones) and prune iff that is fewer than all.
        """
        if self.deterministic_rule == "match_expected":
            kept = torch.round(self.expected_keep_ratio() * self.bin_num).unsqueeze(-1)
            layers = (kept.squeeze(-1) < self.bin_num).to(kept.dtype)
        else:
            layers = deterministic_gates(
                self.layer_log_alpha, self.temperature, self.magical_number, elementwise=True
            )
            if self.monotone:
                kept = torch.round(self.keep_probabilities()[0].sum(-1, keepdim=True))
            else:
                kept = deterministic_gates(self.bin_log_alpha, self.temperature, self.magical_number).sum(
                    -1, keepdim=True)
        calibrated = (self.deployed_kept_bins >= 0).unsqueeze(-1)
        kept = torch.where(calibrated, self.deployed_kept_bins.unsqueeze(-1).to(kept.dtype), kept)
        layers = torch.where(calibrated.squeeze(-1), (kept.squeeze(-1) < self.bin_num).to(layers.dtype), layers)
        if self.monotone:
            index = torch.arange(self.bin_num, device=kept.device)
            bins = (index < kept).to(kept.dtype)
        else:
            score = torch.sigmoid(self.bin_log_alpha / self.temperature * self.magical_number)
            bins = _keep_highest_as_topk(score, kept)
        return GateValues(bins=bins, layers=layers)

    @torch.no_grad()
    def deployed_bins(self) -> Tensor:
        """[L] bins each location keeps at deployment (bin_num where the location does not prune)."""
        values = self.deterministic()
        kept = values.bins.sum(-1).round().long()
        return torch.where(values.layers > 0, kept, torch.full_like(kept, self.bin_num))

    def keep_probabilities(self) -> tuple[Tensor, Tensor]:
        """(bins_p [L, B], layers_p [L]): P(bin kept), P(location prunes); differentiable.

        Monotone: bin b is kept iff bins 0..b all are, so P_b = prod_{c <= b} P(z_c > 0).
        """
        bins_p = prob_nonzero(self.bin_log_alpha, self.temperature)
        if self.monotone:
            bins_p = torch.cumprod(bins_p, dim=-1)
        return bins_p, prob_nonzero(self.layer_log_alpha, self.temperature)

    def expected_keep_ratio(self) -> Tensor:
        """[L]: rho_l = 1 - (1 - mean_b bins_p[l]) * layers_p[l]; differentiable."""
        bins_p, layers_p = self.keep_probabilities()
        return keep_ratio(GateValues(bins=bins_p, layers=layers_p))

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp both log-alpha tensors into [ln 0.01, ln 100]; call after each optimizer step."""
        self.bin_log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)
        self.layer_log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def rank_to_bin(ranks: Tensor, counts: Tensor, bin_num: int) -> Tensor:
    """Bin of each token: floor(rank / count * bin_num) for rank < count, else `bin_num`.

    ranks [B, T]: rank of each token among its row's candidates (0 = best); counts [B]: number of
    candidates per row. Tokens with rank >= count (not candidates) get `bin_num`, the index of the
    "dropped" column the caller appends to the bin keep values. Integer arithmetic: exact at bin
    edges.
    """
    if ranks.ndim != 2 or counts.ndim != 1 or counts.shape[0] != ranks.shape[0]:
        raise ValueError(
            f"expected ranks [B, T] and counts [B], got ranks {tuple(ranks.shape)} and counts {tuple(counts.shape)}"
        )
    if bin_num < 1:
        raise ValueError(f"bin_num must be >= 1, got {bin_num}")
    if ranks.is_floating_point() or counts.is_floating_point():
        raise ValueError(f"ranks and counts must be integer tensors, got {ranks.dtype} and {counts.dtype}")
    counts = counts.unsqueeze(-1)
    candidate = (ranks >= 0) & (ranks < counts)
    bins = torch.div(ranks.clamp_min(0) * bin_num, counts.clamp_min(1), rounding_mode="floor")
    return torch.where(candidate, bins, torch.full_like(bins, bin_num))
