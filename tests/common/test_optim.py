"""Optimizers with weight-decay exemptions (moonlit.common.train.optim): param groups against hand-built ones.

The ``old_*`` builders are the three recipes as their callers wrote them before they shared
``build_optimizer`` (SpaceEvo's SGD, ElasticViT's AdamW, SpaceEvo downstream's plain SGD): the
groups must hold the same parameters (by id, in order) with the same hyper-parameters.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.common.train.optim import build_optimizer, build_optimizer_from_config, is_one_dim, one_dim_or_in


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                          nn.Flatten(), nn.Linear(4, 5))
    model[3].bias.requires_grad_(False)  # a frozen parameter is in no group
    return model


def _groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [{k: [id(p) for p in v] if k == "params" else v for k, v in group.items()}
            for group in optimizer.param_groups]


def old_spaceevo_sgd(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float):
    decayed = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    return torch.optim.SGD([{"params": decayed, "weight_decay": weight_decay},
                            {"params": plain, "weight_decay": 0.0}], lr=lr, momentum=momentum, nesterov=nesterov)


def old_elasticvit_adamw(model: nn.Module, exempt: set[int], lr: float, weight_decay: float, betas, eps):
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in params if p.dim() > 1 and id(p) not in exempt]
    decayed_ids = {id(p) for p in decayed}
    plain = [p for p in params if id(p) not in decayed_ids]
    return torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)


def old_downstream_sgd(params, lr: float, momentum: float, weight_decay: float):
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.SGD(trainable, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def test_sgd_groups_equal_spaceevo_recipe() -> None:
    model = _model()
    new = build_optimizer(model, "sgd", 0.1, 1e-5, momentum=0.9, nesterov=True)
    assert _groups(new) == _groups(old_spaceevo_sgd(model, 0.1, 0.9, True, 1e-5))
    decayed, plain = new.param_groups
    # by hand: both conv weights and the linear weight decay; BN affine and the linear bias do not (conv bias frozen)
    assert [id(p) for p in decayed["params"]] == [id(model[0].weight), id(model[3].weight), id(model[5].weight)]
    assert [id(p) for p in plain["params"]] == [id(model[1].weight), id(model[1].bias), id(model[5].bias)]
    assert (decayed["weight_decay"], plain["weight_decay"], decayed["nesterov"]) == (1e-5, 0.0, True)


def test_adamw_groups_equal_elasticvit_recipe() -> None:
    model = _model()
    exempt = {id(p) for p in model[0].parameters()} | {id(p) for p in model[1].parameters()}  # "conv block"
    new = build_optimizer(model, "adamw", 1e-3, 0.05, no_decay=one_dim_or_in(exempt), betas=(0.9, 0.99), eps=1e-7)
    assert _groups(new) == _groups(old_elasticvit_adamw(model, exempt, 1e-3, 0.05, (0.9, 0.99), 1e-7))
    decayed, plain = new.param_groups
    assert [id(p) for p in decayed["params"]] == [id(model[3].weight), id(model[5].weight)]
    assert isinstance(new, torch.optim.AdamW) and decayed["betas"] == (0.9, 0.99)


def test_decay_on_everything_equals_downstream_recipe() -> None:
    model = _model()
    for source in (model, model.parameters()):
        new = build_optimizer(source, "sgd", 0.0125, 4e-5, no_decay=None, momentum=0.9, nesterov=True)
        assert _groups(new) == _groups(old_downstream_sgd(model.parameters(), 0.0125, 0.9, 4e-5))
        assert len(new.param_groups[0]["params"]) == 6  # 7 parameters, one frozen


def test_first_step_matches_old_recipe() -> None:
    # same groups => same update: one SGD step from identical weights and gradients
    models = [_model(), _model()]
    optimizers = [build_optimizer(models[0], "sgd", 0.1, 0.5, momentum=0.9, nesterov=True),
                  old_spaceevo_sgd(models[1], 0.1, 0.9, True, 0.5)]
    for model, optimizer in zip(models, optimizers, strict=True):
        model(torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(1))).square().sum().backward()
        optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_is_one_dim() -> None:
    assert is_one_dim("bias", nn.Parameter(torch.zeros(3))) and is_one_dim("scale", nn.Parameter(torch.zeros(())))
    assert not is_one_dim("weight", nn.Parameter(torch.zeros(3, 1)))


def test_bad_calls_are_named() -> None:
    with pytest.raises(ValueError, match="optimizer 'adam' is not one of"):
        build_optimizer(_model(), "adam", 0.1, 0.0)
    with pytest.raises(ValueError, match="no_decay needs parameter names"):
        build_optimizer(list(_model().parameters()), "sgd", 0.1, 0.0)


def test_app_configs_build_their_old_optimizers() -> None:
    model = _model()
    spaceevo = compose_config("spaceevo", "train_supernet", []).optim
    assert (spaceevo.name, spaceevo.momentum, spaceevo.nesterov, spaceevo.weight_decay) == ("sgd", 0.9, True, 1e-5)
    assert _groups(build_optimizer_from_config(model, spaceevo, 0.2)) == \
        _groups(old_spaceevo_sgd(model, 0.2, 0.9, True, 1e-5))
    elasticvit = compose_config("elasticvit", "train", []).optim
    exempt = {id(p) for p in model[0].parameters()}
    new = build_optimizer_from_config(model, elasticvit, 1e-4, no_decay=one_dim_or_in(exempt))
    assert _groups(new) == _groups(old_elasticvit_adamw(model, exempt, 1e-4, 0.05, (0.9, 0.999), 1e-8))
    downstream = compose_config("spaceevo", "downstream_cls", []).optim
    new = build_optimizer_from_config(model.parameters(), downstream, no_decay=None)  # lr from the config
    assert _groups(new) == _groups(old_downstream_sgd(model.parameters(), 0.0125, 0.9, 4e-5))


def test_group_options_compose_into_an_app() -> None:
    cfg = compose_config("spaceevo", "downstream_cls", ["optim=adamw"])
    assert (cfg.optim.name, list(cfg.optim.betas), cfg.optim.lr) == ("adamw", [0.9, 0.999], 0.0125)  # app's lr wins
    optimizer = build_optimizer_from_config(_model(), cfg.optim)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_bad_config_nodes_are_input_errors() -> None:
    with pytest.raises(InputError, match=r"optim.name = 'adam'; expected one of \['adamw', 'sgd'\]"):
        build_optimizer_from_config(_model(), {"name": "adam", "lr": 0.1, "weight_decay": 0.0})
    with pytest.raises(InputError, match="optim.weight_decay is missing for optimizer 'sgd'"):
        build_optimizer_from_config(_model(), {"name": "sgd", "lr": 0.1})
    with pytest.raises(InputError, match="optim.lr is missing"):
        build_optimizer_from_config(_model(), {"name": "sgd", "weight_decay": 0.0})
