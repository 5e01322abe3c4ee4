"""Released supernet checkpoints in the reference's layout (moonlit.spaceevo.checkpoints)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from moonlit.common.train.checkpoint import CheckpointError
from moonlit.spaceevo.checkpoints import (
    load_reference_supernet,
    ours_to_reference,
    reference_to_ours,
    to_reference_state_dict,
)
from moonlit.spaceevo.ops import set_quant_mode
from moonlit.spaceevo.supernet import Supernet
from torch import nn

# Has a stacked 3x3 depthwise stage (MobileNetV2K3Res, stage5) and SE blocks; 18M parameters.
SPACE = "mobilew-332160-134200"
RESOLUTIONS = [32]


def _supernet(seed: int) -> Supernet:
    torch.manual_seed(seed)
    net = Supernet.from_encoding(SPACE, num_classes=10, resolutions=RESOLUTIONS)
    generator = torch.Generator().manual_seed(seed)
    for norm in net.modules():
        if isinstance(norm, nn.BatchNorm2d):
            with torch.no_grad():
                norm.weight.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
                norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator) * 0.1)
    return net.eval()


class _AttrDict(dict):
    """Stand-in for the reference's config class (modules.alphanet_training.utils.config.AttrDict)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__ = self


def _save_reference_layout(path: Path, supernet: Supernet, epoch: int) -> None:
    """torch.save a dict shaped like the reference's saver.save_checkpoint, its args an AttrDict."""
    names = ["modules", "modules.alphanet_training", "modules.alphanet_training.utils",
             "modules.alphanet_training.utils.config"]
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    _AttrDict.__module__, _AttrDict.__qualname__ = names[-1], "AttrDict"
    sys.modules[names[-1]].AttrDict = _AttrDict
    try:
        optimizer = torch.optim.SGD(supernet.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        torch.save({
            "epoch": epoch,
            "args": _AttrDict(superspace="mobilew", supernet_choice="332160-134200", epochs=360,
                              lr_scheduler=_AttrDict(method="warmup_cosine_lr", base_lr=0.1)),
            "state_dict": to_reference_state_dict(supernet),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": {"max_iters": 100, "warmup_iters": 5, "last_epoch": 3, "base_lrs": [0.1]},
        }, path)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_reference_key_names() -> None:
    state = to_reference_state_dict(_supernet(0))
    # Names as the reference's modules build them (Supernet.stages -> Stage.blocks -> block ops).
    for key in ["module.stages.first_conv.blocks.0.conv.conv.weight",
                "module.stages.first_conv.blocks.0.conv.conv.sw",
                "module.stages.first_conv.blocks.0.conv.norm.running_var",
                "module.stages.stage0.blocks.0.depth_conv.dwconv.weight",
                "module.stages.stage1.blocks.0.conv1.conv.sa",
                "module.stages.stage3.blocks.0.se.fc.reduce.beta",
                "module.stages.stage5.blocks.0.depth_conv.dwconv.dwconv2.weight",
                "module.stages.stage5.blocks.0.downsample.conv.weight",
                "module.stages.final_expand.blocks.0.conv.norm.weight",
                "module.stages.feature_mix.blocks.0.conv.conv.weight",
                "module.stages.logits.blocks.0.linear.bias",
                "module.stages.logits.blocks.0.linear.sw"]:
        assert key in state, key
    assert not any(k.endswith("initialized") or ".act_quant." in k for k in state)
    assert reference_to_ours("module.stages.stage5.blocks.1.depth_conv.dwconv.dwconv1.sa") == \
        "stages.stage5.blocks.1.depth_conv.dwconv.1.act_quant.scale"
    assert reference_to_ours("stages.logits.blocks.0.linear.beta") == "classifier.act_quant.offset"
    assert ours_to_reference("stages.stage0.blocks.0.point_conv2.norm.weight.initialized") is None
    with pytest.raises(ValueError, match="not 'stages.<stage>.blocks"):
        reference_to_ours("module.features.0.weight")


@pytest.mark.parametrize("quantized", [False, True], ids=["checkpoint.pth", "lsq.pth"])
def test_reference_checkpoint_loads_with_equal_outputs(tmp_path: Path, quantized: bool) -> None:
    source = _supernet(0)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    subnets = [source.set_max(), source.sample_active(np.random.default_rng(3)), source.set_min()]
    if quantized:
        set_quant_mode(source, 8)
        with torch.no_grad():
            for subnet in subnets:  # initialise the quantizers these subnets use
                source.set_active(subnet)
                source(images)
    path = tmp_path / ("lsq.pth" if quantized else "checkpoint.pth")
    _save_reference_layout(path, source, epoch=50 if quantized else 360)

    target = _supernet(1)
    result = load_reference_supernet(path, target)
    assert result.quantized == quantized and result.epoch == (50 if quantized else 360)
    assert result.args["supernet_choice"] == "332160-134200" and result.args["lr_scheduler"]["base_lr"] == 0.1
    target.eval()
    with torch.no_grad():
        for subnet in subnets:
            source.set_active(subnet)
            target.set_active(subnet)
            torch.testing.assert_close(target(images), source(images), rtol=0, atol=0)
    initialized = [m.initialized.item() for n, m in target.named_modules() if n.endswith("_quant")]
    assert all(flag == quantized for flag in initialized)


def test_wrong_space_and_foreign_globals_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 1, "state_dict": to_reference_state_dict(_supernet(0))}, path)
    other = Supernet.from_encoding("mobilew-332160-134201", num_classes=10, resolutions=RESOLUTIONS)
    with pytest.raises(ValueError, match="has shape .* 'mobilew-332160-134201' expects"):
        load_reference_supernet(path, other)

    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "args": Payload()}, evil)
    with pytest.raises(CheckpointError, match="builtins.print"):
        load_reference_supernet(evil, _supernet(0))
