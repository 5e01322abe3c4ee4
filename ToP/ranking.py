"""Token importance from attention, and ranks among the tokens that may be pruned (ToP §3.2).

A token's score at layer l is the attention it receives in layer l: the attention probabilities
averaged over heads and over query rows. The reference averages over *all* query rows, padding
included, so a sample's scores change with the batch it is padded into (flaw 3 of the notes);
``score_rows="valid"`` averages over the rows of tokens that are present and still kept, which
makes scores — and so ranks, kept sets and logits — independent of padding. ``"all"`` reproduces
the reference.
"""

from __future__ import annotations

import torch

SCORE_ROWS = ("valid", "all")


def token_scores(attention_probs: torch.Tensor, query_mask: torch.Tensor | None, rows: str = "valid") -> torch.Tensor:
    """Mean attention each key receives: ``[B, H, T, T]`` probabilities → ``[B, T]`` scores.

    ``query_mask`` ([B, T] bool) marks the query rows to average over when ``rows="valid"``.
    """
    if rows not in SCORE_ROWS:
        raise ValueError(f"score rows must be one of {SCORE_ROWS}, got {rows!r}")
    per_query = attention_probs.mean(dim=1)  # [B, T_query, T_key]
    if rows == "all" or query_mask is None:
        return per_query.mean(dim=1)
    weights = query_mask.to(per_query.dtype)
    count = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    return (per_query * weights.unsqueeze(-1)).sum(dim=1) / count


def candidate_ranks(scores: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of each candidate token by descending score within its row (0 = most important).

    Ties are broken by position (stable sort), so equal scores give the same ranks whatever the
    padding. Non-candidates get ranks ``>= count`` of their row. Returns ``(ranks [B, T], counts [B])``.
    """
    if scores.shape != candidates.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and candidate mask {tuple(candidates.shape)} differ in shape")
    masked = torch.where(candidates, scores, torch.full_like(scores, float("-inf")))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    ranks = torch.argsort(order, dim=1)  # inverse permutation: position → rank
    return ranks, candidates.sum(dim=1)
