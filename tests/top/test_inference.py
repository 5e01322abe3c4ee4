"""Physical token dropping equals ToPModel's masked semantics, really shrinks, and costs the ToP MAC formula."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from moonlit.common.profiling.flops import count_macs
from moonlit.top.constraint import EncoderDims, encoder_macs
from moonlit.top.inference import TokenDroppingModel
from moonlit.top.masks import GateValues, TokenGates
from moonlit.top.model import PruningConfig, ToPModel

FIRST = ["the movie was not good at all , sadly", "great acting", "a long and winding plot that never ends , "
         "with many characters who talk and talk and talk", "fine"]
SECOND = ["i would not watch it again", "a moving story told with care and a lot of patience", "yes", "no way"]


def _load(folder: Path, num_layers: int):
    """The fixture classifier, with extra (randomly initialised) layers when ``num_layers`` > 2.

    Its init (std 0.02) gives near-uniform attention and logits that hardly depend on the input, so
    a wrong kept set would move the logits by less than the 1e-5 tolerance. Seeded noise on every
    weight but the LayerNorms makes attention peaked and logits O(1): pruning then visibly changes
    them (checked in ``test_logits_and_counts_equal_masked_semantics``).
    """
    extra = {"num_hidden_layers": num_layers} if num_layers != 2 else {}
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager", **extra).eval()
    generator = torch.Generator().manual_seed(num_layers)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" not in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model, AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def models(tiny_bert_dir: Path, tiny_roberta_dir: Path) -> dict:
    return {(kind, layers): _load(folder, layers)
            for kind, folder in (("bert", tiny_bert_dir), ("roberta", tiny_roberta_dir)) for layers in (2, 4)}


def _first_bins(bin_num: int, kept_bins: list[int]) -> GateValues:
    """Location p keeps its best ``kept_bins[p]`` bins; every location prunes."""
    bins = (torch.arange(bin_num) < torch.tensor(kept_bins).unsqueeze(1)).float()
    return GateValues(bins=bins, layers=torch.ones(len(kept_bins)))


def _learned_gates(locations: int, bin_num: int, monotone: bool, seed: int) -> TokenGates:
    """Gates whose log-alphas look trained: spread out, most locations switched on."""
    gates = TokenGates(num_locations=locations, bin_num=bin_num, monotone=monotone)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gates.bin_log_alpha.copy_(torch.randn(locations, bin_num, generator=generator) * 3.0)
        gates.layer_log_alpha.copy_(torch.randn(locations, generator=generator) * 2.0 + 2.0)
    return gates.eval()


def _setup(models: dict, kind: str, layers: int, gate_kind: str, pairs: bool):
    model, tokenizer = models[(kind, layers)]
    prune_layers = tuple(range(1, layers))
    bin_num = 5
    pruning = PruningConfig(prune_layers, bin_num, special_token_ids=tuple(tokenizer.all_special_ids))
    if gate_kind == "first_bins":
        gates, gate_values = None, _first_bins(bin_num, [3, 2, 4][: len(prune_layers)])
    else:
        gates, gate_values = _learned_gates(len(prune_layers), bin_num, gate_kind == "learned_monotone", layers), None
    top = ToPModel(model, pruning, gates).eval()
    batch = tokenizer(FIRST, SECOND if pairs else None, padding=True, return_tensors="pt")
    return top, batch, gate_values


CASES = [(kind, layers, gates, pairs) for kind in ("bert", "roberta") for layers in (2, 4)
         for gates in ("first_bins", "learned_monotone", "learned_reference") for pairs in (False, True)]


@pytest.mark.parametrize(("kind", "layers", "gate_kind", "pairs"), CASES)
def test_logits_and_counts_equal_masked_semantics(models: dict, kind: str, layers: int, gate_kind: str,
                                                  pairs: bool) -> None:
    top, batch, gate_values = _setup(models, kind, layers, gate_kind, pairs)
    with torch.no_grad():
        masked = top(**batch, gate_values=gate_values)
        dense = top(**batch, prune=False)
        dropped = TokenDroppingModel(top).eval()(**batch, gate_values=gate_values, return_positions=True)
    counts = masked.kept_counts
    assert (counts[:, 1:] < counts[:, :1]).any()  # something really was pruned
    assert (masked.logits - dense.logits).abs().max() > 1e-2  # ... and it moved the logits well past tolerance
    assert torch.equal(dropped.kept_counts, counts)
    torch.testing.assert_close(dropped.logits, masked.logits, atol=1e-5, rtol=1e-5)
    # kept original positions = the positions ToPModel keeps, in order, then -1 padding
    for layer, positions in enumerate(dropped.kept_positions):
        assert positions.shape[1] == int(counts[:, layer].max())
        for sample in range(positions.shape[0]):
            expected = torch.nonzero(masked.keep[layer][sample] > 0).flatten()
            assert torch.equal(positions[sample, : len(expected)], expected)
            assert (positions[sample, len(expected):] == -1).all()


def test_hidden_states_really_shrink(models: dict) -> None:
    """Shapes seen by each layer's query projection and FFN, recorded by hooks on the HF submodules."""
    top, batch, gate_values = _setup(models, "bert", 4, "first_bins", pairs=False)
    attention_lengths, ffn_lengths = [], []
    hooks = []
    for layer in top.layers:
        hooks.append(layer.attention.self.query.register_forward_pre_hook(
            lambda module, args: attention_lengths.append(args[0].shape[1])))
        hooks.append(layer.intermediate.register_forward_pre_hook(
            lambda module, args: ffn_lengths.append(args[0].shape[1])))
    try:
        with torch.no_grad():
            out = TokenDroppingModel(top).eval()(**batch, gate_values=gate_values)
    finally:
        for hook in hooks:
            hook.remove()
    padded = batch["input_ids"].shape[1]
    largest_kept = out.kept_counts.max(dim=0).values.tolist()
    assert attention_lengths == [padded] + largest_kept[1:]
    # layer l's FFN runs on the tokens layer l + 1 keeps (the last layer's on its own)
    assert ffn_lengths == largest_kept[1:] + largest_kept[-1:]
    assert all(a > b for a, b in zip(attention_lengths, attention_lengths[1:]))  # strictly shrinking here


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_counted_macs_equal_the_top_formula(models: dict, kind: str) -> None:
    """FlopCounterMode on the dropping encoder, batch 1, vs ``encoder_macs`` on the kept counts.

    Convention: FlopCounterMode counts the matmul family only (Q/K/V, output and FFN linears, QK^T,
    attention x V); the ToP formula also charges the softmax, heads * n^2 per layer, which we add
    by hand. Embeddings, pooler and classifier lie outside the formula: the counted module is the
    encoder alone (it takes the embeddings' output).
    """
    top, _, _ = _setup(models, kind, 4, "first_bins", pairs=False)
    tokenizer = models[(kind, 4)][1]
    sample = tokenizer(FIRST[2], SECOND[1], return_tensors="pt")
    gate_values = _first_bins(5, [3, 2, 4])
    dropping = TokenDroppingModel(top).eval()
    valid = sample["attention_mask"].bool()
    with torch.no_grad():
        hidden = top.base.embeddings(input_ids=sample["input_ids"], token_type_ids=sample.get("token_type_ids"))
        protected = top._protected(sample["input_ids"], valid)
        kept = dropping(**sample, gate_values=gate_values).kept_counts[0].tolist()
    report = count_macs(dropping.encoder, hidden, valid, protected, gate_values)
    dims = EncoderDims.from_config(top.hf_model.config)
    assert len(set(kept)) == len(kept)  # every location pruned, so each layer has its own length
    softmax = sum(dims.num_heads * n * n for n in kept)
    assert report.macs + softmax == encoder_macs(kept, dims)
    assert "aten._softmax" in report.uncounted_ops  # the term we add is indeed not counted


def test_unsupported_settings_are_refused(models: dict) -> None:
    model, _ = models[("bert", 2)]
    with pytest.raises(ValueError, match="score_rows='valid'"):
        TokenDroppingModel(ToPModel(model, PruningConfig.reference_semantics((1,), 4)))
    top, batch, _ = _setup(models, "bert", 2, "first_bins", pairs=False)
    dropping = TokenDroppingModel(top).eval()
    soft = GateValues(bins=torch.full((1, 5), 0.5), layers=torch.ones(1))
    with pytest.raises(ValueError, match="0/1 gate values"):
        dropping(**batch, gate_values=soft)
    with pytest.raises(ValueError, match=r"expected \(1, 5\)"):
        dropping(**batch, gate_values=_first_bins(4, [2]))
    with pytest.raises(ValueError, match="has no gates"):
        dropping(**batch)
    with pytest.raises(RuntimeError, match="eval"):
        dropping.train()(**batch, gate_values=_first_bins(5, [2]))
    dropping.eval()
