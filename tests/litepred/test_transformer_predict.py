"""Standard torch transformer layers through LitePred: every node in a kernel, a finite positive prediction.

``nn.TransformerEncoderLayer`` (both ``batch_first`` layouts, post- and pre-norm, ReLU and GELU) and a
small ViT-like stack (patch-embedding conv, ``nn.TransformerEncoder``, head) are exported with the
project's exporter (``exporter="dynamo"``: the TorchScript exporter of the installed torch cannot
trace ``nn.MultiheadAttention``), checked against torch by onnxruntime, detected under the debug
(base) rules and the ort-fp32 rules, and predicted. Expected kernel counts come from the layer
structure: per encoder layer 2 LayerNorms, 4 Linear layers (in-projection, out-projection, two MLP
layers) and one attention (base rules) or two MatMuls and a Softmax (ort-fp32, which does not fuse
attention).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moonlit.common.export.onnx import export_onnx
from moonlit.litepred.graph.onnx_import import load_graph
from moonlit.litepred.kernels.detect import detect_kernels
from moonlit.litepred.pipeline import timed_predict_onnx

DIM, HEADS, TOKENS = 32, 4, 16


class TinyViT(nn.Module):
    """Patch embedding (4x4 conv) → ``nn.TransformerEncoder`` → LayerNorm → mean over tokens → Linear."""

    def __init__(self, depth: int = 2, batch_first: bool = True, norm_first: bool = True,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.batch_first = batch_first
        self.patch = nn.Conv2d(3, DIM, 4, 4)
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 2 * DIM, dropout=0.0, activation=activation,
                                           batch_first=batch_first, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.encoder(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self.head(self.norm(x).mean(1))


def _layer(batch_first: bool, norm_first: bool = False, activation: str = "relu") -> nn.Module:
    return nn.TransformerEncoderLayer(DIM, HEADS, 2 * DIM, dropout=0.0, activation=activation,
                                      batch_first=batch_first, norm_first=norm_first)


# name: (module, input, encoder layers, linear layers outside them, layernorms outside them, gelu)
CASES = {
    "layer-batch-first": (lambda: _layer(True), (2, TOKENS, DIM), 1, 0, 0, False),
    "layer-seq-first": (lambda: _layer(False), (TOKENS, 2, DIM), 1, 0, 0, False),
    "layer-pre-norm-gelu": (lambda: _layer(True, True, "gelu"), (1, TOKENS, DIM), 1, 0, 0, True),
    "vit-batch-first": (lambda: TinyViT(), (1, 3, 16, 16), 2, 1, 1, True),
    "vit-seq-first": (lambda: TinyViT(batch_first=False, norm_first=False, activation="relu"), (1, 3, 16, 16),
                      2, 1, 1, False),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("transformers")
    files = {}
    for name, (build, shape, *_) in CASES.items():
        torch.manual_seed(0)
        # check=True: onnxruntime's outputs equal torch's, so the graph is the layer
        files[name] = export_onnx(build().eval(), (torch.randn(*shape),), folder / f"{name}.onnx", exporter="dynamo")
    return files


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_node_is_covered_and_the_kernels_match_the_structure(exported, name: str) -> None:
    _, shape, layers, extra_linear, extra_norms, gelu = CASES[name]
    graph = load_graph(exported[name])
    for platform in ("debug", "ort-fp32"):
        detection = detect_kernels(graph, platform)
        assert detection.unassigned == [], (platform, detection.unassigned)
        by_type = detection.summary()["by_type"]
        assert by_type["layernorm"] == 2 * layers + extra_norms
        assert by_type["fc"] == 4 * layers + extra_linear
        if platform == "debug":
            assert by_type["attention"] == layers and "softmax" not in by_type
            attention = detection.configs("attention")[0]
            batch = shape[1] if name == "layer-seq-first" else shape[0]
            assert (attention["heads"], attention["q_tokens"], attention["kv_tokens"], attention["qk_dim"],
                    attention["v_dim"]) == (HEADS, TOKENS, TOKENS, DIM // HEADS, DIM // HEADS)
            assert attention["batch"] == batch
            # the base rules fuse GELU into its Linear: one fc per layer carries it
            assert sum(c["act"] == "gelu" for c in detection.configs("fc")) == (layers if gelu else 0)
        else:
            assert by_type["matmul"] == 2 * layers and by_type["softmax"] == layers
            gelus = sum(c["act"] == "gelu" for c in detection.configs("act"))
            assert gelus == (layers if gelu else 0)  # one GELU kernel per layer, not its Div/Erf/Add/Mul parts
            assert "eltwise" not in by_type


@pytest.mark.parametrize("name", sorted(CASES))
def test_transformers_predict_finite_positive_on_debug(exported, synthetic_predictor, name: str) -> None:
    result = timed_predict_onnx(synthetic_predictor, exported[name], "debug")
    assert result["unassigned_nodes"] == [] and result["unpredicted_kernels"] == []
    assert 0 < result["latency_ms"] < float("inf")
