"""moonlit.top.baselines: static top-k and random dropping keep exactly ToP's per-sample, per-layer counts."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from moonlit.common.data.glue import get_glue_task
from moonlit.top.baselines import compare_baselines, gated_teacher
from moonlit.top.masks import TokenGates
from moonlit.top.model import PruningConfig, ToPModel

SENTENCES = ["the movie was not good at all , sadly", "great acting", "a long and winding plot that never ends , "
             "with many characters who talk and talk", "fine", "a moving story told with care", "no way at all"]


@pytest.fixture(scope="module")
def setup(tiny_bert_dir):
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    with torch.no_grad():  # peaked attention, so different kept sets give visibly different logits
        for name, parameter in teacher.named_parameters():
            if "LayerNorm" not in name:
                parameter.add_(torch.randn(parameter.shape) * 0.2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(torch.randn(parameter.shape) * 0.05)
    bin_num = 4
    pruning = PruningConfig((1,), bin_num, special_token_ids=tuple(tokenizer.all_special_ids))
    gates = TokenGates(num_locations=1, bin_num=bin_num, monotone=True, deterministic_rule="threshold")
    with torch.no_grad():  # deployed: keep the best 2 of 4 bins at layer 1
        gates.bin_log_alpha.copy_(torch.tensor([[5.0, 5.0, -5.0, -5.0]]))
        gates.layer_log_alpha.fill_(5.0)
    pruned = ToPModel(student, pruning, gates.eval()).eval()
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    loader = [{**encoded, "labels": labels}]
    return teacher, pruned, loader, encoded


def test_gated_teacher_keeps_the_counts_the_gates_imply(setup):
    teacher, pruned, _, encoded = setup
    out = gated_teacher(pruned, teacher)(**encoded)
    lengths = encoded["attention_mask"].sum(1)
    # Hand count: [CLS] and [SEP] are protected; a location keeps ceil(2 * c / 4) of its c candidates.
    expected = [math.ceil(2 * (int(n) - 2) / 4) + 2 for n in lengths]
    assert out.kept_counts[:, 0].tolist() == lengths.tolist()
    assert out.kept_counts[:, 1].tolist() == expected


def test_static_top_k_on_the_same_weights_is_the_pruned_model(setup):
    _, pruned, _, encoded = setup
    same = gated_teacher(pruned, pruned.hf_model)
    assert torch.equal(same(**encoded).logits, pruned(**encoded).logits)


def test_rows_share_kept_counts_and_macs(setup):
    teacher, pruned, loader, _ = setup
    rows = compare_baselines(pruned, teacher, loader, get_glue_task("sst2"), padded_length=64, random_seeds=3)
    assert set(rows) == {"dense teacher", "ToP", "static top-k", "random"}
    for name in ("static top-k", "random"):
        assert rows[name]["mean_kept_tokens_per_layer"] == rows["ToP"]["mean_kept_tokens_per_layer"]
        assert rows[name]["measured_mac_sparsity"] == pytest.approx(rows["ToP"]["measured_mac_sparsity"], abs=1e-12)
    assert rows["dense teacher"]["measured_mac_sparsity"] == 0.0
    assert rows["random"]["seeds"] == 3 and len(rows["random"]["metric_per_seed"]) == 3
    assert rows["random"]["metric"] == pytest.approx(sum(rows["random"]["metric_per_seed"]) / 3)


def test_random_dropping_chooses_other_tokens(setup):
    teacher, pruned, _, encoded = setup
    gated = gated_teacher(pruned, teacher)
    attention = gated(**encoded)
    gated.rank_source, gated.random_generator = "random", torch.Generator().manual_seed(0)
    random = gated(**encoded)
    assert torch.equal(attention.kept_counts, random.kept_counts)
    assert not torch.equal(attention.keep[1], random.keep[1])


def test_needs_a_pruned_model(setup):
    teacher, _, _, _ = setup
    with pytest.raises(ValueError, match="pruned ToPModel"):
        gated_teacher(ToPModel(teacher), teacher)
