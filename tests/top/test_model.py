"""ToPModel: dense runs equal Hugging Face; pruning is padding-independent and keeps what it must."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from moonlit.top.constraint import EncoderDims, layer_macs
from moonlit.top.masks import GateValues, TokenGates
from moonlit.top.model import PruningConfig, ToPModel, measured_mac_sparsity

SENTENCES = ["the movie was not good at all , sadly", "great acting", "a long and winding plot that never ends , "
             "with many characters who talk and talk and talk"]


def _load(folder: Path, layers: int | None = None):
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


@pytest.fixture(scope="module")
def bert(tiny_bert_dir: Path):
    return _load(tiny_bert_dir)


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_dense_run_equals_hugging_face(which: str, tiny_bert_dir: Path, tiny_roberta_dir: Path) -> None:
    model, tokenizer = _load(tiny_bert_dir if which == "bert" else tiny_roberta_dir)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        ours = ToPModel(model)(**batch).logits
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def _pruning_gates(bin_num: int, kept_bins: int, locations: int) -> GateValues:
    bins = torch.zeros(locations, bin_num)
    bins[:, :kept_bins] = 1.0
    return GateValues(bins=bins, layers=torch.ones(locations))


def test_padding_does_not_change_kept_tokens_or_logits(bert) -> None:
    model, tokenizer = bert
    pruning = PruningConfig(prune_layers=(1,), bin_num=4, special_token_ids=tuple(tokenizer.all_special_ids))
    top = ToPModel(model, pruning).eval()
    gates = _pruning_gates(4, kept_bins=2, locations=1)  # keep the top half of the prunable tokens
    alone = tokenizer(SENTENCES[:1], return_tensors="pt")
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        single = top(**alone, gate_values=gates)
        batched = top(**batch, gate_values=gates)
    length = alone["input_ids"].shape[1]
    assert batch["input_ids"].shape[1] > length  # the sample really is padded in the batch
    for layer in range(len(single.keep)):
        assert torch.equal(single.keep[layer][0] > 0, batched.keep[layer][0, :length] > 0)
    assert single.kept_counts[0, 1] < single.kept_counts[0, 0]  # something was pruned
    torch.testing.assert_close(batched.logits[:1], single.logits, atol=1e-5, rtol=1e-5)


def test_reference_scores_depend_on_padding(bert) -> None:
    """The flaw we fix: averaging over padding query rows changes a padded sample's scores."""
    model, tokenizer = bert
    reference = ToPModel(model, PruningConfig.reference_semantics((1,), 4)).eval()
    ours = ToPModel(model, PruningConfig((1,), 4)).eval()
    gates = _pruning_gates(4, 2, 1)
    alone = tokenizer(SENTENCES[1:2], return_tensors="pt")
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    n = alone["input_ids"].shape[1]
    with torch.no_grad():
        ref_alone, ref_batch = reference(**alone, gate_values=gates), reference(**batch, gate_values=gates)
        our_alone, our_batch = ours(**alone, gate_values=gates), ours(**batch, gate_values=gates)
    assert not torch.allclose(ref_alone.scores[0][0], ref_batch.scores[0][1, :n], atol=1e-4)
    torch.testing.assert_close(our_alone.scores[0][0], our_batch.scores[0][1, :n], atol=1e-6, rtol=1e-5)


def test_protected_tokens_survive_full_pruning(bert) -> None:
    model, tokenizer = bert
    pruning = PruningConfig(prune_layers=(1,), bin_num=4, special_token_ids=tuple(tokenizer.all_special_ids))
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = ToPModel(model, pruning).eval()(**batch, gate_values=_pruning_gates(4, 0, 1))
    # every prunable token is dropped at layer 1: only [CLS] and [SEP] remain
    assert out.kept_counts[:, 1].tolist() == [2, 2, 2]
    assert out.kept_counts[:, 0].tolist() == batch["attention_mask"].sum(1).tolist()


def test_layer_gate_off_keeps_everything(bert) -> None:
    model, tokenizer = bert
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    gates = GateValues(bins=torch.zeros(1, 4), layers=torch.zeros(1))  # bins say drop, but the layer gate is off
    with torch.no_grad():
        out = ToPModel(model, PruningConfig((1,), 4)).eval()(**batch, gate_values=gates)
        dense = ToPModel(model)(**batch)
    assert torch.equal(out.kept_counts[:, 1], out.kept_counts[:, 0])
    torch.testing.assert_close(out.logits, dense.logits)


def test_measured_sparsity_from_kept_counts(bert) -> None:
    model, tokenizer = bert
    dims = EncoderDims.from_config(model.config)
    pruning = PruningConfig(prune_layers=(1,), bin_num=4, special_token_ids=tuple(tokenizer.all_special_ids))
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = ToPModel(model, pruning).eval()(**batch, gate_values=_pruning_gates(4, 0, 1))
    # two layers; layer 0 runs on n tokens with its FFN on the 2 tokens layer 1 keeps; layer 1 on 2 tokens.
    lengths = batch["attention_mask"].sum(1).tolist()
    pruned = sum(layer_macs(n, 2, dims) + layer_macs(2, 2, dims) for n in lengths)
    dense = sum(2 * layer_macs(n, n, dims) for n in lengths)
    stats = measured_mac_sparsity(out, dims, padded_length=64)
    assert stats["mac_sparsity"] == pytest.approx(1 - pruned / dense)
    assert stats["flops_reduction_vs_padded"] == pytest.approx(3 * 2 * layer_macs(64, 64, dims) / pruned)


def test_gradients_reach_the_gates_in_training(bert) -> None:
    model, tokenizer = bert
    gates = TokenGates(num_locations=1, bin_num=4, bin_init=0.0, layer_init=0.5)
    top = ToPModel(model, PruningConfig((1,), 4), gates).train()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    for _ in range(8):  # hard-concrete samples at exactly 0 or 1 carry no gradient; a few draws do
        top(**batch).logits.sum().backward()
    assert gates.bin_log_alpha.grad is not None and gates.bin_log_alpha.grad.abs().sum() > 0
    assert gates.layer_log_alpha.grad is not None and gates.layer_log_alpha.grad.abs().sum() > 0


def test_bad_configuration_errors(bert) -> None:
    model, _ = bert
    with pytest.raises(ValueError, match="layer 0 cannot be pruned"):
        PruningConfig(prune_layers=(0, 1), bin_num=4)
    with pytest.raises(ValueError, match="beyond the model's 2 layers"):
        ToPModel(model, PruningConfig(prune_layers=(1, 5), bin_num=4))
    with pytest.raises(ValueError, match="expected \\(1, 8\\)"):
        ToPModel(model, PruningConfig((1,), 8), TokenGates(num_locations=1, bin_num=4))
