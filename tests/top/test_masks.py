"""Hard-concrete gates and rank bins (moonlit.top.masks) against Monte Carlo and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moonlit.top.masks import (
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    GateValues,
    TokenGates,
    deterministic_gates,
    hard_concrete_sample,
    keep_ratio,
    prob_nonzero,
    rank_to_bin,
)

BETA = 2.0 / 3.0


def p_nonzero_np(log_alpha: np.ndarray) -> np.ndarray:
    """P(z > 0) derived by hand: z > 0 iff s > 0.1 / 1.2 = 1/12, i.e. logistic noise L > beta*logit(1/12) - a."""
    threshold = BETA * math.log((1 / 12) / (11 / 12)) - log_alpha
    return 1.0 / (1.0 + np.exp(threshold))  # P(L > x) = 1 - sigmoid(x) = sigmoid(-x)


def reference_eval_row(log_alpha: list[float]) -> list[float]:
    """Brute force of the reference's eval rule for one row, with Python's round and sorting."""
    p = p_nonzero_np(np.array(log_alpha, dtype=np.float64))
    num_zeros = round(len(log_alpha) - float(p.sum()))
    order = sorted(range(len(log_alpha)), key=lambda i: log_alpha[i])
    dropped = set(order[:num_zeros])
    return [0.0 if i in dropped else 1.0 for i in range(len(log_alpha))]


# --- hard_concrete_sample / prob_nonzero ---------------------------------------------------------

def test_prob_nonzero_matches_monte_carlo() -> None:
    log_alphas = torch.tensor([-4.0, -2.0, -1.0, 0.0, 0.7, 2.0, 4.0])
    draws = 200_000
    gen = torch.Generator().manual_seed(0)
    z = hard_concrete_sample(log_alphas.unsqueeze(-1).expand(-1, draws), generator=gen)
    empirical = (z > 0).double().mean(-1)
    closed = prob_nonzero(log_alphas).double()
    assert torch.allclose(closed, empirical, atol=0.005), (closed, empirical)
    assert np.allclose(closed.numpy(), p_nonzero_np(log_alphas.double().numpy()), atol=1e-6)


def test_sample_equals_definition_with_same_noise() -> None:
    log_alpha = torch.tensor([[-1.5, 0.0, 0.3], [2.0, -0.2, 5.0]])
    z = hard_concrete_sample(log_alpha, generator=torch.Generator().manual_seed(7))
    u = torch.rand(log_alpha.shape, generator=torch.Generator().manual_seed(7)).double().numpy()
    u = u * (1 - 2e-6) + 1e-6
    s = 1 / (1 + np.exp(-(np.log(u) - np.log(1 - u) + log_alpha.double().numpy()) / BETA))
    expected = np.clip(s * 1.2 - 0.1, 0.0, 1.0)
    assert np.allclose(z.numpy(), expected, atol=1e-6)


def test_sample_range_has_exact_zeros_and_ones_and_gradient() -> None:
    log_alpha = torch.zeros(20_000, requires_grad=True)
    z = hard_concrete_sample(log_alpha, generator=torch.Generator().manual_seed(1))
    inside = (z > 0) & (z < 1)
    assert inside.any() and (z == 0).any() and (z == 1).any()
    z.sum().backward()
    assert (log_alpha.grad[inside] > 0).all()  # z increases with log_alpha where not clipped
    assert (log_alpha.grad[~inside] == 0).all()


# --- deterministic_gates -------------------------------------------------------------------------

def test_deterministic_gates_trained_looking_row() -> None:
    row = [4.2, 3.1, -3.9, 0.4, -4.5, 2.2, -1.0, 1.3, -2.7, 4.6]
    gates = deterministic_gates(torch.tensor(row))
    assert gates.tolist() == reference_eval_row(row)
    # by hand: sum P(z > 0) = 6.83 of 10, so round(3.17) = 3 zeros, at the three smallest log-alphas
    assert gates.tolist() == [1, 1, 0, 1, 0, 1, 1, 1, 0, 1]


def test_deterministic_gates_rows_are_independent() -> None:
    gen = torch.Generator().manual_seed(3)
    loga = torch.empty(2, 3, 17).uniform_(LOG_ALPHA_MIN, LOG_ALPHA_MAX, generator=gen)
    gates = deterministic_gates(loga)
    assert gates.shape == loga.shape
    for i in range(2):
        for j in range(3):
            assert gates[i, j].tolist() == reference_eval_row(loga[i, j].tolist())


def test_deterministic_single_gate_and_elementwise() -> None:
    # P(z > 0) >= 0.5 iff log_alpha >= beta * ln(1/11) ~ -1.599
    border = BETA * math.log(1 / 11)
    assert float(deterministic_gates(torch.tensor(border + 0.01))) == 1.0
    assert float(deterministic_gates(torch.tensor(border - 0.01))) == 0.0
    assert deterministic_gates(torch.tensor(3.0)).ndim == 0
    layer = torch.tensor([-4.0, border - 0.05, border + 0.05, 4.0])
    assert deterministic_gates(layer, elementwise=True).tolist() == [0.0, 0.0, 1.0, 1.0]
    # without elementwise the same vector is one row: round(4 - sum P) zeros
    assert deterministic_gates(layer).tolist() == reference_eval_row(layer.tolist())


# --- TokenGates ----------------------------------------------------------------------------------

def test_token_gates_init_and_shapes() -> None:
    torch.manual_seed(0)
    gates = TokenGates(4, 6)
    assert gates.bin_log_alpha.shape == (4, 6) and gates.layer_log_alpha.shape == (4,)
    assert abs(gates.bin_log_alpha.mean().item() - 10.0) < 0.02
    bins_p, layers_p = gates.keep_probabilities()
    assert (bins_p > 0.999).all() and (layers_p < 1e-3).all()  # nothing pruned at init
    assert torch.allclose(gates.expected_keep_ratio(), torch.ones(4), atol=1e-3)
    values = gates()
    assert values.bins.shape == (4, 6) and values.layers.shape == (4,)


def test_training_forward_is_monotone_cumprod_and_straight_through() -> None:
    torch.manual_seed(0)
    mono = TokenGates(3, 8, monotone=True)
    indep = TokenGates(3, 8, monotone=False)
    with torch.no_grad():
        loga = torch.randn(3, 8) * 1.5
        for g in (mono, indep):
            g.bin_log_alpha.copy_(loga)
            g.layer_log_alpha.copy_(torch.tensor([0.0, 0.5, -0.3]))
    a = mono(generator=torch.Generator().manual_seed(5))
    b = indep(generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a.bins, torch.from_numpy(np.cumprod(b.bins.detach().numpy(), axis=-1)))
    assert (a.bins[:, 1:] <= a.bins[:, :-1]).all()
    assert ((a.bins >= 0) & (a.bins <= 1)).all()
    # layer forward values are exactly 0/1, and the gradient is the soft sample's
    assert set(a.layers.tolist()) <= {0.0, 1.0}
    a.layers.sum().backward()
    grad = mono.layer_log_alpha.grad
    # recompute d soft / d log_alpha with the same noise (the bins consumed the generator first)
    gen = torch.Generator().manual_seed(5)
    torch.rand(3, 8, generator=gen)
    la = torch.tensor([0.0, 0.5, -0.3], requires_grad=True)
    soft = hard_concrete_sample(la, generator=gen)
    assert torch.equal(a.layers.detach(), (soft > 0).float())
    soft.sum().backward()
    assert torch.allclose(grad, la.grad)


def test_monotone_probabilities_match_monte_carlo() -> None:
    torch.manual_seed(0)
    gates = TokenGates(2, 5, monotone=True)
    with torch.no_grad():
        gates.bin_log_alpha.copy_(torch.tensor([[3.0, 1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.5, 0.5, 0.5]]))
        gates.layer_log_alpha.copy_(torch.tensor([0.2, -1.0]))
    bins_p, layers_p = gates.keep_probabilities()
    hand = np.cumprod(p_nonzero_np(gates.bin_log_alpha.detach().double().numpy()), axis=-1)
    assert np.allclose(bins_p.detach().numpy(), hand, atol=1e-6)
    # Monte Carlo over many forward passes: P(bin kept) and the expected keep ratio
    draws = 20_000
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        big = TokenGates(2 * draws, 5, monotone=True)
        big.bin_log_alpha.copy_(gates.bin_log_alpha.repeat(draws, 1))
        big.layer_log_alpha.copy_(gates.layer_log_alpha.repeat(draws))
        sample = big(generator=gen)
        hard = GateValues(bins=(sample.bins > 0).double(), layers=sample.layers.double())
        kept_bins = hard.bins.view(draws, 2, 5).mean(0)
        ratio = keep_ratio(hard).view(draws, 2).mean(0)
    assert torch.allclose(kept_bins, bins_p.detach().double(), atol=0.015)
    assert torch.allclose(ratio, gates.expected_keep_ratio().detach().double(), atol=0.01)


def test_expected_keep_ratio_formula_and_gradients() -> None:
    torch.manual_seed(0)
    gates = TokenGates(3, 4, monotone=False)
    with torch.no_grad():
        gates.bin_log_alpha.copy_(torch.randn(3, 4))
        gates.layer_log_alpha.copy_(torch.randn(3))
    rho = gates.expected_keep_ratio()
    pb = p_nonzero_np(gates.bin_log_alpha.detach().double().numpy())
    pl = p_nonzero_np(gates.layer_log_alpha.detach().double().numpy())
    assert np.allclose(rho.detach().numpy(), 1 - (1 - pb.mean(-1)) * pl, atol=1e-6)
    rho.sum().backward()
    assert (gates.bin_log_alpha.grad.abs() > 0).all() and (gates.layer_log_alpha.grad.abs() > 0).all()


def test_eval_gates_monotone_and_reference() -> None:
    torch.manual_seed(0)
    loga = torch.tensor([[4.0, -3.0, 4.0, 4.0, 0.0, -4.0], [-4.0, -4.0, 4.0, 4.0, 4.0, 4.0]])
    layer = torch.tensor([2.0, -3.0])
    mono, indep = TokenGates(2, 6, monotone=True).eval(), TokenGates(2, 6, monotone=False).eval()
    with torch.no_grad():
        for g in (mono, indep):
            g.bin_log_alpha.copy_(loga)
            g.layer_log_alpha.copy_(layer)
    ref = indep()
    assert ref.bins.tolist() == [reference_eval_row(r) for r in loga.tolist()]
    assert ref.layers.tolist() == [1.0, 0.0]
    got = mono()
    k = np.round(np.cumprod(p_nonzero_np(loga.double().numpy()), axis=-1).sum(-1))
    assert got.bins.tolist() == [[1.0 if b < k[r] else 0.0 for b in range(6)] for r in range(2)]
    assert got.layers.tolist() == [1.0, 0.0]
    assert (got.bins[:, 1:] <= got.bins[:, :-1]).all()
    assert got.bins[1].sum() == 0  # a dropped top bin drops every bin after it


@pytest.mark.parametrize("monotone", [True, False])
def test_match_expected_rule_keeps_rounded_expected_ratio(monotone: bool) -> None:
    torch.manual_seed(0)
    gates = TokenGates(5, 10, monotone=monotone, deterministic_rule="match_expected")
    with torch.no_grad():
        gates.bin_log_alpha.copy_(torch.randn(5, 10) * 2)
        gates.layer_log_alpha.copy_(torch.tensor([-4.0, -1.0, 0.0, 1.0, 4.0]))
    rho = gates.expected_keep_ratio().detach()
    det = gates.eval()()
    assert torch.allclose(keep_ratio(det), torch.round(rho * 10) / 10)
    assert torch.equal(det.layers, (torch.round(rho * 10) < 10).float())
    if monotone:
        assert (det.bins[:, 1:] <= det.bins[:, :-1]).all()
    else:  # kept bins are those with the largest log-alpha
        for row, kept in zip(gates.bin_log_alpha.detach(), det.bins):
            n = int(kept.sum())
            assert set(torch.nonzero(kept).flatten().tolist()) == set(row.argsort(descending=True)[:n].tolist())


def test_clamp_and_bad_arguments() -> None:
    gates = TokenGates(2, 3)  # init bins at 10, layers at -10: outside the clamp range
    gates.clamp_()
    assert torch.allclose(gates.bin_log_alpha, torch.full((2, 3), math.log(100.0)))
    assert torch.allclose(gates.layer_log_alpha, torch.full((2,), math.log(0.01)))
    with pytest.raises(ValueError, match="bin_num"):
        TokenGates(2, 0)
    with pytest.raises(ValueError, match="deterministic_rule"):
        TokenGates(2, 3, deterministic_rule="nearest")


# --- rank_to_bin ---------------------------------------------------------------------------------

def test_rank_to_bin_by_hand() -> None:
    ranks = torch.tensor([[0, 1, 2, 3, 4, 5], [2, 0, 1, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    counts = torch.tensor([6, 3, 0])
    bins = rank_to_bin(ranks, counts, 4)
    # row 0: floor(r * 4 / 6); row 1: floor(r * 4 / 3) for r < 3, dropped (4) beyond; row 2: no candidates
    assert bins.tolist() == [[0, 0, 1, 2, 2, 3], [2, 0, 1, 4, 4, 4], [4, 4, 4, 4, 4, 4]]
    # exact bin edge: rank 3 of 6 with 2 bins is bin 1 (no float rounding down)
    assert rank_to_bin(torch.tensor([[3]]), torch.tensor([6]), 2).item() == 1
    with pytest.raises(ValueError, match="counts"):
        rank_to_bin(ranks, torch.tensor([6, 3]), 4)


def _reference_deterministic_z(log_alpha: torch.Tensor) -> list[float]:
    """The reference's eval rule for one 1-D row, step by step as its l0 module runs it: the count of
    zeros from Python's round of (size - sum P(z > 0)), then torch.topk(largest=False) picks them."""
    size = log_alpha.numel()
    p_nonzero = torch.sigmoid(log_alpha - 2 / 3 * math.log(0.1 / 1.1))  # 1 - Q(z <= 0)
    num_zeros = round(size - float(p_nonzero.sum()))
    soft = torch.sigmoid(log_alpha / (2 / 3) * 0.8)
    if num_zeros > 0:
        soft[torch.topk(soft, k=num_zeros, largest=False).indices] = 0.0
    return (soft > 0).float().tolist()


@pytest.mark.parametrize("bin_num", [20, 25, 50])
def test_threshold_rule_breaks_ties_as_the_reference_topk(bin_num: int) -> None:
    clamped = torch.full((bin_num,), LOG_ALPHA_MIN)  # a row the regulariser drove to the clamp
    rows = [clamped, torch.full((bin_num,), -1.0), torch.full((bin_num,), LOG_ALPHA_MAX)]
    generator = torch.Generator().manual_seed(bin_num)
    for _ in range(20):  # rows with many exact ties among few distinct values
        values = torch.tensor([LOG_ALPHA_MIN, -2.0, 0.5, LOG_ALPHA_MAX])
        rows.append(values[torch.randint(0, 4, (bin_num,), generator=generator)])
    for row in rows:
        assert deterministic_gates(row).tolist() == _reference_deterministic_z(row.clone()), row.tolist()
    if bin_num == 25:  # the clamped row keeps one bin, and topk's tie order makes it bin 7, not bin 0
        assert deterministic_gates(clamped).nonzero().flatten().tolist() == [7]
    # the same through TokenGates with the reference's settings (non-monotone, threshold)
    gates = TokenGates(len(rows), bin_num, monotone=False, deterministic_rule="threshold")
    with torch.no_grad():
        gates.bin_log_alpha.copy_(torch.stack(rows))
        gates.layer_log_alpha.fill_(LOG_ALPHA_MAX)
    assert gates.eval().deterministic().bins.tolist() == [_reference_deterministic_z(r.clone()) for r in rows]
