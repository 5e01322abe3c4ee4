"""ToP's models in the model registry (moonlit.top.models through moonlit.common.models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification

from moonlit.common.errors import InputError
from moonlit.common.models import create_model, list_models
from moonlit.top.artifacts import save_pruned
from moonlit.top.masks import TokenGates
from moonlit.top.model import PruningConfig, ToPModel
from moonlit.top.reference_writer import write_reference_style_checkpoint

TINY = {"vocab_size": 50, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 24,
        "max_position_embeddings": 20, "num_labels": 3}


def _bert_parameters(vocab: int, hidden: int, layers: int, intermediate: int, positions: int, labels: int) -> int:
    """BERT's parameter count by hand: embeddings (word, position, 2 token types, LayerNorm), per layer
    Q/K/V/output linears + LayerNorm, FFN in/out + LayerNorm, the pooler and the classifier."""
    embeddings = (vocab + positions + 2) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 2 * hidden + (hidden * intermediate + intermediate) \
        + (intermediate * hidden + hidden) + 2 * hidden
    return embeddings + layers * layer + hidden * hidden + hidden + hidden * labels + labels


def _ids() -> torch.Tensor:
    ids = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


def test_top_models_are_registered_but_not_with_timm():
    assert list_models(paper="top") == ["top_bert_random", "top_dense", "top_pruned", "top_released"]
    assert not any(timm.models.is_model(name) for name in list_models(paper="top"))


def test_random_bert_has_the_hand_counted_parameters_and_its_checkpoint_round_trips(tmp_path: Path):
    model = create_model("top_bert_random", **TINY, seed=3)
    expected = _bert_parameters(50, 16, 2, 24, 20, 3)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.config._attn_implementation == "eager" and not model.training
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "bert.safetensors"))
    again = create_model("top_bert_random", **TINY, seed=4, checkpoint=tmp_path / "bert.safetensors")
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    with pytest.raises(InputError, match="no local pretrained weights for 'top_bert_random'"):
        create_model("top_bert_random", pretrained=True, **TINY)


def test_dense_classifier_from_a_local_folder(tiny_bert_dir: Path):
    model = create_model("top_dense", checkpoint=tiny_bert_dir)
    direct = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=_ids()).logits, direct(input_ids=_ids()).logits, rtol=0, atol=0)
    assert create_model("top_dense", checkpoint=tiny_bert_dir, num_labels=5).classifier.out_features == 5


@torch.no_grad()
def test_pruned_folder_round_trips(tmp_path: Path, tiny_bert_dir: Path):
    hf_model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, attn_implementation="eager")
    gates = TokenGates(1, 4)
    gates.deployed_kept_bins.copy_(torch.tensor([2]))  # layer 1 keeps half of the ranked tokens
    source = ToPModel(hf_model, PruningConfig((1,), 4, special_token_ids=(101, 102)), gates).eval()
    folder = save_pruned(tmp_path / "pruned", source)
    loaded = create_model("top_pruned", checkpoint=folder)
    assert isinstance(loaded, ToPModel) and loaded.pruning == source.pruning
    expected, got = source(_ids()), loaded(_ids())
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    assert torch.equal(got.kept_counts, expected.kept_counts)
    assert int(expected.kept_counts[0, 1]) < int(expected.kept_counts[0, 0])  # the gates did prune


def test_released_folder_gives_the_reference_semantics(tmp_path: Path, tiny_bert_dir: Path):
    hf_model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    token_log_alpha = torch.tensor([[5.0, 5.0, -5.0, -5.0]])
    folder = write_reference_style_checkpoint(tmp_path / "released", hf_model, token_log_alpha=token_log_alpha,
                                              layer_log_alpha=torch.tensor([5.0]), prune_layers=(1,), bin_num=4)
    model = create_model("top_released", checkpoint=folder)
    assert isinstance(model, ToPModel) and model.pruning.prune_layers == (1,)
    assert model.pruning == PruningConfig.reference_semantics((1,), 4)
    torch.testing.assert_close(model.gates.bin_log_alpha, token_log_alpha)


@pytest.mark.parametrize("name", ["top_pruned", "top_released", "top_dense"])
def test_folder_models_say_which_checkpoint_they_need(name: str, tmp_path: Path):
    with pytest.raises(InputError, match=f"{name} has no built-in weights.*checkpoint=<"):
        create_model(name)
    with pytest.raises((InputError, FileNotFoundError), match="does not exist"):
        create_model(name, checkpoint=tmp_path / "absent")
