"""Released ElasticViT supernet checkpoints in the reference's layout (moonlit.elasticvit.checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from moonlit.common.train.checkpoint import CheckpointError
from moonlit.elasticvit.checkpoints import (
    is_reference_checkpoint,
    load_reference_supernet,
    ours_to_reference,
    reference_to_ours,
    to_reference_state_dict,
)
from moonlit.elasticvit.evaluate import load_supernet
from moonlit.elasticvit.models import named_subnet
from moonlit.elasticvit.space import to_reference_arch
from moonlit.elasticvit.supernet import ElasticViTSupernet

NUM_CLASSES = 10
NAMED_MODELS = ["T1", "S1", "L3"]

# Keys and shapes of the reference's FusedSuperNet (models/model.py, cnn.py, transformer.py, built
# with configs/final_3min_space.yaml), read from its source: first_conv / first_conv_bn,
# conv_stem = SuperCNNLayer whose layers are ModuleList([MobileBlock]), feature_exactor.<s> with
# SuperTransformerBlock.layers alternating SuperAttention (owning .reduction at layer 0) and SuperFFN,
# the misspelt "classifer". Shapes: C stage widths 32/48, T widths 96/160/288/320, expand 6,
# v_scale 4, classifier_mul 6, head 1984, grids 16/16/8/4 at resolution 256.
REFERENCE_KEY_SHAPES: dict[str, tuple[int, ...]] = {
    "first_conv.weight": (24, 3, 3, 3),
    "first_conv_bn.running_var": (24,),
    "conv_stem.layers.1.0.dw_conv.weight": (24, 1, 5, 5),
    "conv_stem.layers.0.0.shortcut_conv.weight": (24, 24, 1, 1),
    "feature_exactor.0.layers.4.0.pw_conv.weight": (192, 32, 1, 1),
    "feature_exactor.1.layers.0.0.se_conv1.weight": (72, 288, 1, 1),
    "feature_exactor.1.layers.5.0.pwl_bn.num_batches_tracked": (),
    "feature_exactor.2.layers.0.reduction.se_conv2.bias": (576,),
    "feature_exactor.2.layers.0.qkv.weight": (96 * 2 + 96 * 4, 96),
    "feature_exactor.2.layers.0.attention_bias": ((2 * 16 - 1) ** 2, 96 // 16),
    "feature_exactor.2.layers.0.relative_position_index": (16 * 16, 16 * 16),
    "feature_exactor.3.layers.11.fc1.weight": (160 * 5, 160),
    "feature_exactor.4.layers.10.dw_v_conv.weight": (288 * 4, 1, 3, 3),
    "feature_exactor.5.layers.0.attention_bias": ((2 * 4 - 1) ** 2, 320 // 16),
    "feature_exactor.5.layers.9.norm1.weight": (320,),
    "feature_exactor.5.layers.10.proj.weight": (320, 320 * 4),
    "pre_head_0.weight": (320 * 6, 320),
    "pre_head_norm_0.running_mean": (320 * 6,),
    "pre_head_1.weight": (1984, 320 * 6),
    "classifer.bias": (NUM_CLASSES,),
}


def _supernet(seed: int) -> ElasticViTSupernet:
    """A supernet whose every float tensor is random (BN gammas and residual branches not at init)."""
    net = ElasticViTSupernet(num_classes=NUM_CLASSES)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in net.state_dict().items():
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            elif value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=generator) * 0.2)
    return net.eval()


def _reference_position_index(side: int) -> torch.Tensor:
    """The reference's relative_position_index, derived by hand: row offset + side - 1 times
    (2 side - 1), plus column offset + side - 1, for every (query, key) pair of a side x side grid."""
    index = torch.empty(side * side, side * side, dtype=torch.long)
    for query in range(side * side):
        for key in range(side * side):
            dy, dx = query // side - key // side, query % side - key % side
            index[query, key] = (dy + side - 1) * (2 * side - 1) + (dx + side - 1)
    return index


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ElasticViTSupernet, ElasticViTSupernet]:
    """A ``*_checkpoint.pth.tar`` shaped like the reference's save_checkpoint: DDP-prefixed weights, an EMA."""
    model, ema = _supernet(0), _supernet(1)
    path = tmp_path_factory.mktemp("reference") / "elasticvit_supernet_checkpoint.pth.tar"
    bank_entry = [to_reference_arch(named_subnet("T1")), -2.5]
    torch.save({
        "epoch": 599,
        "state_dict": to_reference_state_dict(model, ddp_prefix=True),
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "weight_decay": 0.05, "params": [0, 1]}]},
        "bank": [[bank_entry], []],
        "arch": "supernet",
        "extras": {"top1": 12.5, "top5": 40.0},
        "model_ema": to_reference_state_dict(ema, ddp_prefix=False),
    }, path)
    return path, model, ema


def test_key_map_round_trips_over_every_key() -> None:
    ours = ElasticViTSupernet(num_classes=NUM_CLASSES).state_dict()
    reference = {ours_to_reference(key) for key in ours}
    assert len(reference) == len(ours)  # one-to-one
    for key in ours:
        assert reference_to_ours(ours_to_reference(key)) == key
        assert reference_to_ours("module." + ours_to_reference(key)) == key
    # The reference also saves one position-index buffer per attention layer: 5+6+6+6 layers.
    saved = to_reference_state_dict(ElasticViTSupernet(num_classes=NUM_CLASSES))
    indices = [key for key in saved if reference_to_ours(key) is None]
    assert len(indices) == 23 and all(key.endswith(".relative_position_index") for key in indices)
    assert len(saved) == 667 + 23  # 690 = len(FusedSuperNet(...).state_dict()) in the reference
    assert all(saved[key].is_floating_point() or key.endswith(("num_batches_tracked", "position_index"))
               for key in saved)


def test_reference_key_names_and_shapes() -> None:
    saved = to_reference_state_dict(ElasticViTSupernet(num_classes=NUM_CLASSES), ddp_prefix=False)
    for key, shape in REFERENCE_KEY_SHAPES.items():
        assert key in saved, key
        assert tuple(saved[key].shape) == shape, key
    assert reference_to_ours("module.feature_exactor.3.layers.11.fc1.weight") == "stages.3.blocks.5.ffn.fc1.weight"
    assert reference_to_ours("feature_exactor.5.layers.10.proj.weight") == "stages.5.blocks.5.attn.proj.weight"
    assert reference_to_ours("feature_exactor.2.layers.0.reduction.se_conv2.bias") == "stages.2.reduction.se_conv2.bias"
    assert reference_to_ours("conv_stem.layers.1.0.dw_conv.weight") == "stem.blocks.1.dw_conv.weight"
    assert reference_to_ours("first_conv_bn.running_var") == "first_bn.running_var"
    assert reference_to_ours("pre_head_norm_0.running_mean") == "head.token_norm.running_mean"
    assert reference_to_ours("classifer.bias") == "head.classifier.bias"
    assert reference_to_ours("module.feature_exactor.4.layers.2.relative_position_index") is None
    for stage, side in ((2, 16), (3, 16), (4, 8), (5, 4)):  # the T stages' grids at resolution 256
        torch.testing.assert_close(saved[f"feature_exactor.{stage}.layers.2.relative_position_index"],
                                   _reference_position_index(side), rtol=0, atol=0)


def test_unknown_keys_are_named() -> None:
    for key in ["module.features.0.weight", "feature_exactor.2.layers.0.0.qkv.weight", "first_conv.bias",
                "feature_exactor.0.layers.0.0.pw_conv.bias", "classifier.weight", "pre_head_2.weight"]:
        with pytest.raises(ValueError, match=f"reference key '{key}' is not a key"):
            reference_to_ours(key)
    with pytest.raises(ValueError, match="'qkv.weight' belongs to an attention layer.*layer 3.*FFN"):
        reference_to_ours("feature_exactor.2.layers.3.qkv.weight")
    with pytest.raises(ValueError, match="our key 'stages.2.blocks.0.attn.bias_index'"):
        ours_to_reference("stages.2.blocks.0.attn.bias_index")


@torch.no_grad()
def test_named_models_from_a_reference_file_match_the_source(
        reference_file: tuple[Path, ElasticViTSupernet, ElasticViTSupernet]) -> None:
    path, source, _ = reference_file
    assert is_reference_checkpoint(path) and not is_reference_checkpoint(path.parent)
    loaded = load_reference_supernet(path).eval()  # sized by the file: NUM_CLASSES outputs
    assert loaded.head.classifier.out_features == NUM_CLASSES
    untouched = _supernet(2)
    generator = torch.Generator().manual_seed(3)
    for name in NAMED_MODELS:
        subnet = named_subnet(name)
        images = torch.randn(2, 3, subnet.resolution, subnet.resolution, generator=generator)
        for net in (source, loaded, untouched):
            net.set_active(subnet)
        expected = source.get_active_subnet().eval()(images)
        torch.testing.assert_close(loaded.get_active_subnet().eval()(images), expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)
        assert not torch.allclose(untouched(images), expected)  # the comparison can fail


def test_ema_weights_and_evaluate_hook(reference_file: tuple[Path, ElasticViTSupernet, ElasticViTSupernet]) -> None:
    path, source, ema = reference_file
    from_model = load_reference_supernet(path, ElasticViTSupernet(num_classes=NUM_CLASSES), which="model")
    from_evaluate = load_supernet(str(path), num_classes=NUM_CLASSES)  # the reference evaluates its EMA
    evaluated, modelled, source_state = from_evaluate.state_dict(), from_model.state_dict(), source.state_dict()
    for key, value in ema.state_dict().items():
        assert torch.equal(evaluated[key], value), key
        assert torch.equal(modelled[key], source_state[key]), key
    assert not from_evaluate.training
    with pytest.raises(ValueError, match=r"2 tensors have the wrong shape.*'classifer.weight: \(10, 1984\) \(expected \(7, 1984\)\)'"):
        load_reference_supernet(path, ElasticViTSupernet(num_classes=7))
    with pytest.raises(ValueError, match="which='best' is not 'model' or 'ema'"):
        load_reference_supernet(path, which="best")  # type: ignore[arg-type]


def test_missing_keys_bad_layouts_and_forbidden_globals(tmp_path: Path) -> None:
    # Tiny tensors under every key but one: the missing key is reported before any shape is checked.
    keys = [ours_to_reference(k) for k in ElasticViTSupernet(num_classes=NUM_CLASSES).state_dict()]
    missing = "feature_exactor.4.layers.3.fc2.bias"
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": {"module." + k: torch.zeros(1) for k in keys if k != missing}}, path)
    with pytest.raises(ValueError, match=rf"lacks 1 weights .*\['{missing}'\] \(ours: \['stages.4.blocks.1.ffn.fc2.bias'\]"):
        load_reference_supernet(path, ElasticViTSupernet(num_classes=NUM_CLASSES))

    unknown = tmp_path / "unknown.pth"
    torch.save({"state_dict": {"module.first_conv.weight": torch.zeros(24, 3, 3, 3),
                               "module.blocks.0.mlp.fc1.weight": torch.zeros(2, 2)}}, unknown)
    with pytest.raises(ValueError, match=r"1 keys are not keys of the reference's supernet: \['module.blocks.0.mlp"):
        load_reference_supernet(unknown)

    no_ema = tmp_path / "no_ema.pt"
    torch.save({"epoch": 3, "state_dict": {"first_conv.weight": torch.zeros(24, 3, 3, 3)}}, no_ema)
    with pytest.raises(ValueError, match="no state dict of tensors under 'model_ema'"):
        load_reference_supernet(no_ema, which="ema")

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("this must not run",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"first_conv.weight": torch.zeros(1)}, "extras": Payload()}, evil)
    with pytest.raises(CheckpointError, match="builtins.print"):
        load_reference_supernet(evil)
    with pytest.raises(CheckpointError, match="builtins.print"):
        load_supernet(evil, num_classes=NUM_CLASSES)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_supernet(tmp_path / "absent.pth", num_classes=NUM_CLASSES)


@torch.no_grad()
def test_attention_tensors_need_no_reshape(reference_file: tuple[Path, ElasticViTSupernet, ElasticViTSupernet]
                                           ) -> None:
    """The reference's attention, written from its source, on the file's tensors equals our layer.

    Reference (models/transformer.py): Q/K/V rows start at 0, max_qk_dim // 2 = C_max and
    max_qk_dim = 2 C_max of qkv.weight; the bias is attention_bias[relative_position_index] viewed
    (R, R, R, R, heads) and cut to the [:H, :W, :H, :W] corner; "LayerNorm" over tokens x channels.
    """
    path, _, _ = reference_file
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "module.feature_exactor.2.layers.2."  # T1 stage, second attention layer
    max_width, side, grid = 96, 16, 8
    width, v_scale = 64, 2
    heads, value_dim = width // 16, 16 * v_scale
    values = heads * value_dim
    tokens = torch.randn(2, grid * grid, width, generator=torch.Generator().manual_seed(5))

    norm = F.layer_norm(tokens, tokens.shape[1:], state[prefix + "norm1.weight"][:width].expand(tokens.shape[1:]),
                        state[prefix + "norm1.bias"][:width].expand(tokens.shape[1:]))
    weight = state[prefix + "qkv.weight"]
    qkv = torch.cat([weight[:width, :width], weight[max_width:max_width + width, :width],
                     weight[2 * max_width:2 * max_width + values, :width]])
    q, k, v = (norm @ qkv.T).view(2, grid * grid, heads, -1).split([16, 16, value_dim], dim=3)
    v = v.reshape(2, grid * grid, values).transpose(1, 2).reshape(2, values, grid, grid)
    v = F.conv2d(v, state[prefix + "dw_v_conv.weight"][:values], padding=1, groups=values)
    v = v.flatten(2).transpose(1, 2).reshape(2, grid * grid, heads, value_dim).permute(0, 2, 1, 3)
    logits = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) * 16 ** -0.5
    table = state[prefix + "attention_bias"][state[prefix + "relative_position_index"].view(-1)]
    bias = table.view(side, side, side, side, -1)[:grid, :grid, :grid, :grid, :heads]
    logits = logits + bias.reshape(grid * grid, grid * grid, heads).permute(2, 0, 1)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, grid * grid, values)
    out = F.linear(F.hardswish(out), state[prefix + "proj.weight"][:width, :values], state[prefix + "proj.bias"][:width])
    expected = tokens + out

    attention = load_reference_supernet(path).stages[2].blocks[1].attn
    attention.set_active(v_scale=v_scale)
    torch.testing.assert_close(attention(tokens), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention.get_active_subnet(width, grid)(tokens), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_create_model_pretrained_from_a_reference_file(
        reference_file: tuple[Path, ElasticViTSupernet, ElasticViTSupernet]) -> None:
    from moonlit.common.models import create_model

    path, _, ema = reference_file
    model = create_model("T1", pretrained=True, checkpoint=path, num_classes=NUM_CLASSES)
    ema.set_active(named_subnet("T1"))
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model(images), ema.get_active_subnet().eval()(images), rtol=0, atol=0)
