"""Gradient conflict between consecutive steps (moonlit.elasticvit.conflict), against hand-computed cosines."""

from __future__ import annotations

import math
import random

import pytest
import torch

from moonlit.elasticvit.conflict import GradientConflict, shared_cosine, summarize_cosines
from moonlit.elasticvit.sampling import StepSample
from moonlit.elasticvit.space import ConvStageSpace, SearchSpace, TransformerStageSpace, min_subnet, random_subnet
from moonlit.elasticvit.supernet import ElasticViTSupernet
from moonlit.elasticvit.train_step import StepSettings, train_step


def test_shared_cosine_uses_only_elements_both_gradients_touch() -> None:
    current = torch.tensor([1.0, 0.0, 2.0, 3.0])
    previous = torch.tensor([2.0, 5.0, 0.0, -1.0])
    # shared elements 0 and 3: (1, 3) . (2, -1) = -1; norms sqrt(10), sqrt(5)
    assert shared_cosine(current, previous) == pytest.approx(-1 / math.sqrt(50))
    assert math.isnan(shared_cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])))  # nothing shared
    assert shared_cosine(torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different sizes"):
        shared_cosine(torch.ones(3), torch.ones(4))


def _set_grads(layer: torch.nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    layer.weight.grad = torch.tensor(weight)
    layer.bias.grad = torch.tensor(bias)


def test_monitor_series_and_resume() -> None:
    layer = torch.nn.Linear(2, 2)
    monitor = GradientConflict(layer.parameters())
    _set_grads(layer, [[1.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    assert monitor.observe() is None  # first step: nothing to compare with
    _set_grads(layer, [[1.0, 1.0], [0.0, 0.0]], [0.0, 0.0])
    assert monitor.observe() == pytest.approx(1.0)  # only element (0, 0) is shared: same sign
    _set_grads(layer, [[-2.0, 1.0], [0.0, 0.0]], [0.0, 0.0])
    expected = (-2 * 1 + 1 * 1) / (math.sqrt(5) * math.sqrt(2))
    resumed = GradientConflict(layer.parameters())
    resumed.load_state_dict(monitor.state_dict())
    assert monitor.observe() == pytest.approx(expected)
    assert resumed.observe() == pytest.approx(expected)  # the buffer carries the previous step


def test_summary_against_hand_values() -> None:
    summary = summarize_cosines([None, 0.5, -0.25, math.nan, 0.75, 0.1])
    assert summary.steps == 4
    assert summary.mean == pytest.approx((0.5 - 0.25 + 0.75 + 0.1) / 4)
    assert summary.median == pytest.approx((0.1 + 0.5) / 2)
    assert summary.negative_fraction == pytest.approx(0.25)
    assert summarize_cosines([None]).steps == 0


def test_train_step_reports_the_cosine_of_its_summed_gradient() -> None:
    space = SearchSpace(
        resolutions=(32,), first_conv_widths=(8,), stem_depths=(1,), stem_kernels=(3,),
        conv_stages=(ConvStageSpace("C1", (8, 16), (1, 2), True, False),),
        transformer_stages=(TransformerStageSpace("T1", (16, 32), (1, 2), True),),
        conv_expands=(2,), conv_kernels=(3,), mlp_ratios=(2,), v_scales=(2,), head_dim=16, reduction_expand=3,
        reduction_kernel=3, head_width_multiplier=2, head_hidden=32)
    torch.manual_seed(0)
    net = ElasticViTSupernet(space, num_classes=3, dropout=0.0).train()
    monitor = GradientConflict(net.parameters())
    rng = random.Random(0)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    grads = []
    cosines = []
    for _ in range(2):
        sample = StepSample(0, (random_subnet(rng, space),), (None,), (False,), min_subnet(space))
        result = train_step(net, sample, images, labels, optimizer, settings=StepSettings(agc_clip_factor=None),
                            conflict=monitor)
        cosines.append(result["grad_cos"])
        grads.append(torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                                for p in net.parameters()]))
    assert cosines[0] is None
    shared = (grads[0] != 0) & (grads[1] != 0)
    a, b = grads[1][shared].double(), grads[0][shared].double()
    assert cosines[1] == pytest.approx(float(a @ b / (a.norm() * b.norm())), rel=1e-6)
