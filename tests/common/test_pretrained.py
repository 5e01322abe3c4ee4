"""Local pretrained weights (moonlit.common.train.pretrained.load_local_weights): formats, nesting, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.train.pretrained import load_local_weights


def _net(out_features: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, out_features))


def test_nested_ddp_checkpoint_loads_exactly(tmp_path: Path) -> None:
    source = _net()
    path = tmp_path / "teacher.pth"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = _net()
    load_local_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_shape_mismatch_is_one_input_error_line_and_loads_nothing(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _net(out_features=5).state_dict().items()}, str(path))
    target = _net(out_features=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InputError) as info:
        load_local_weights(target, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "2.weight (5, 4) in the file vs (2, 4) in the model" in message and "(2 in all)" in message
    for key, value in before.items():  # not even the matching first layer was loaded
        assert torch.equal(target.state_dict()[key], value), key


def test_missing_keys_strict_and_not(tmp_path: Path) -> None:
    path = tmp_path / "part.safetensors"
    partial = {k: v for k, v in _net().state_dict().items() if k.startswith("0.")}
    save_file(partial, str(path))
    with pytest.raises(InputError, match=r"missing \['2.weight', '2.bias'\], unexpected \[\] \(2 / 0 in all\)"):
        load_local_weights(_net(), path)
    target = _net()
    load_local_weights(target, path, strict=False)
    assert torch.equal(target[0].weight, partial["0.weight"])


def test_a_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(InputError, match="list.pth holds a list; expected a dict"):
        load_local_weights(_net(), path)
