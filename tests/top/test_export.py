"""ONNX export of token-dropping ToP: onnxruntime equals the eager dropping model on unseen batch shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from moonlit.common.export.int8 import quantization_summary
from moonlit.top.export import export_pruned_onnx, quantize_pruned_dynamic
from moonlit.top.inference import TokenDroppingModel
from moonlit.top.masks import GateValues
from moonlit.top.model import PruningConfig, ToPModel

NUM_LAYERS = 4
BIN_NUM = 4
# The export example: batch 2, padded to its longer sentence.
EXAMPLE = ["the movie was not good at all , sadly", "great acting"]
# Other shapes than the example: batch 1 longer than it, batch 3 shorter with padding, batch 3 pairs.
OTHER_BATCHES = {
    "one_long": (["a long and winding plot that never ends , with many characters who talk and talk and talk "
                  "and then talk some more about the plot"], None),
    "three_short": (["fine", "no way", "i would not watch it again"], None),
    "three_pairs": (["yes", "a moving story told with care", "the end"],
                    ["it was fine and the actors were good", "no", "a lot of patience is needed to sit through"]),
}


def _load(folder: Path) -> tuple[torch.nn.Module, object]:
    """The fixture classifier with 4 layers and seeded weight noise (std 0.2, LayerNorms untouched).

    The fixture's init (std 0.02) gives near-uniform attention, so a wrong kept set would hardly
    move the logits; the noise makes attention peaked and logits O(1).
    """
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, attn_implementation="eager", num_hidden_layers=NUM_LAYERS).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" not in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model, AutoTokenizer.from_pretrained(folder)


def _half_bins() -> GateValues:
    """Every location prunes and keeps its best half of the rank bins."""
    locations = NUM_LAYERS - 1
    return GateValues(bins=(torch.arange(BIN_NUM) < BIN_NUM // 2).float().expand(locations, -1).clone(),
                      layers=torch.ones(locations))


@pytest.fixture(scope="module", params=["bert", "roberta"])
def exported(request: pytest.FixtureRequest, tiny_bert_dir: Path, tiny_roberta_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tiny_bert_dir if request.param == "bert" else tiny_roberta_dir
    model, tokenizer = _load(folder)
    pruning = PruningConfig(tuple(range(1, NUM_LAYERS)), BIN_NUM, special_token_ids=tuple(tokenizer.all_special_ids))
    top = ToPModel(model, pruning).eval()
    gates = _half_bins()
    example = dict(tokenizer(EXAMPLE, padding=True, return_tensors="pt"))
    path = export_pruned_onnx(top, tmp_path_factory.mktemp("export") / "top.onnx", example_batch=example,
                              gate_values=gates)
    batches = {name: dict(tokenizer(first, second, padding=True, return_tensors="pt"))
               for name, (first, second) in OTHER_BATCHES.items()}
    return {"top": top, "gates": gates, "path": path, "example": example, "batches": batches,
            "tokenizer": tokenizer, "kind": request.param}


def _run(path: Path, batch: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    return session.run(None, {name: batch[name].numpy().astype(np.int64) for name in names})


@pytest.mark.parametrize("batch_name", list(OTHER_BATCHES))
def test_onnxruntime_matches_torch_on_other_shapes(exported: dict, batch_name: str) -> None:
    top, gates, batch = exported["top"], exported["gates"], exported["batches"][batch_name]
    assert batch["input_ids"].shape != exported["example"]["input_ids"].shape
    logits, kept_counts = _run(exported["path"], batch)
    with torch.no_grad():
        dropped = TokenDroppingModel(top).eval()(**batch, gate_values=gates)
        masked = top(**batch, gate_values=gates)
        dense = top(**batch, prune=False)
        top.rank_source = "random"  # same kept counts, other kept tokens
        top.random_generator = torch.Generator().manual_seed(0)
        randomly_kept = TokenDroppingModel(top).eval()(**batch, gate_values=gates)
        top.rank_source = "attention"
    # Pruning really happened in every sample and moved the logits well past the tolerance ...
    assert (masked.kept_counts[:, -1] < masked.input_lengths).all()
    assert (masked.logits - dense.logits).abs().max() > 1e-2
    # ... and which tokens are kept matters: same counts, other tokens → other logits.
    assert torch.equal(randomly_kept.kept_counts, masked.kept_counts)
    assert (randomly_kept.logits - masked.logits).abs().max() > 1e-2
    # So equality with ORT shows the attention-based selection runs inside the graph.
    np.testing.assert_array_equal(kept_counts, masked.kept_counts.numpy())
    np.testing.assert_allclose(logits, dropped.logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits, masked.logits.numpy(), atol=1e-4, rtol=1e-4)


def test_selection_ops_are_in_the_graph(exported: dict) -> None:
    model = onnx.load(str(exported["path"]))
    op_types = {node.op_type for node in model.graph.node}
    assert {"TopK", "GatherElements", "Range"} <= op_types  # ranking, gather of kept tokens, dynamic width
    names = [value.name for value in model.graph.input]
    assert names == (["input_ids", "attention_mask", "token_type_ids"] if "token_type_ids" in exported["example"]
                     else ["input_ids", "attention_mask"])
    for value in model.graph.input:  # batch and sequence axes stay symbolic
        assert [dim.dim_param for dim in value.type.tensor_type.shape.dim] == ["batch", "sequence"]


def test_hidden_states_shrink_inside_the_graph(exported: dict, tmp_path: Path) -> None:
    """Expose the gathered hidden states ([B, n, d] floats) as extra outputs; n = largest kept count."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported["path"])))
    elem_types = {value.name: value.type.tensor_type.elem_type for value in model.graph.value_info}
    gathered = [node.output[0] for node in model.graph.node if node.op_type == "GatherElements"
                and elem_types.get(node.output[0]) == onnx.TensorProto.FLOAT]
    assert len(gathered) == NUM_LAYERS - 1  # one gather of the hidden states per pruning location
    for name in gathered:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe = tmp_path / "probe.onnx"
    onnx.save(model, str(probe))
    batch = exported["batches"]["three_pairs"]
    _, kept_counts, *hidden = _run(probe, batch)
    widths = [array.shape[1] for array in hidden]
    assert widths == kept_counts.max(axis=0)[1:].tolist()
    assert batch["input_ids"].shape[1] > widths[0] > widths[1] > widths[2]


def test_dynamic_int8_agrees_with_fp32(exported: dict, tmp_path: Path) -> None:
    int8_path = quantize_pruned_dynamic(exported["path"], tmp_path / "top_int8.onnx")
    summary = quantization_summary(int8_path)
    assert summary.quantized.get("MatMul", 0) > 0
    generator = torch.Generator().manual_seed(1)
    vocab = exported["tokenizer"].vocab_size
    agree = total = 0
    for _ in range(4):  # random ids, lengths 6..24, padded per batch
        lengths = torch.randint(6, 25, (16,), generator=generator)
        width = int(lengths.max())
        mask = (torch.arange(width) < lengths.unsqueeze(1)).long()
        ids = torch.randint(5, vocab, (16, width), generator=generator) * mask
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        fp32_logits, fp32_counts = _run(exported["path"], batch)
        int8_logits, _ = _run(int8_path, batch)
        assert (fp32_counts[:, -1] < lengths.numpy()).all()
        agree += int((fp32_logits.argmax(1) == int8_logits.argmax(1)).sum())
        total += len(lengths)
    assert agree / total >= 0.9, f"INT8 argmax agrees with FP32 on {agree}/{total} random inputs"


def test_bad_arguments_are_refused(exported: dict, tmp_path: Path) -> None:
    top, example = exported["top"], exported["example"]
    with pytest.raises(ValueError, match="attention_mask"):
        export_pruned_onnx(top, tmp_path / "a.onnx", example_batch={"input_ids": example["input_ids"]},
                           gate_values=exported["gates"])
    soft = GateValues(bins=torch.full((NUM_LAYERS - 1, BIN_NUM), 0.5), layers=torch.ones(NUM_LAYERS - 1))
    with pytest.raises(ValueError, match="0/1 gate values"):
        export_pruned_onnx(top, tmp_path / "b.onnx", example_batch=example, gate_values=soft)
    with pytest.raises(ValueError, match="opset 10"):
        export_pruned_onnx(top, tmp_path / "c.onnx", example_batch=example, gate_values=exported["gates"], opset=10)
    with pytest.raises(ValueError, match="has no gates"):
        export_pruned_onnx(top, tmp_path / "d.onnx", example_batch=example)
