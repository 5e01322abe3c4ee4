"""INT8 deployment with the learned LSQ+ grids (moonlit.spaceevo.deploy).

The subject is a small subnet of the published onnxw space trained for a few dozen steps on
generated images (a random network's logits barely depend on its input, so top-1 agreement would
be trivially 100%), then switched to LSQ+ 8 bits and trained a few more steps.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from moonlit.common.data.imagenet import build_imagenet_datasets
from moonlit.common.data.synthetic import write_image_folder
from moonlit.common.export.int8 import quantization_summary
from moonlit.spaceevo.deploy import (
    export_lsq_qdq,
    optimized_op_counts,
    quantize_with_calibration,
    snap_offsets_to_grid_,
)
from moonlit.spaceevo.ops.lsq_plus import set_quant_mode
from moonlit.spaceevo.supernet import Supernet

NUM_CLASSES = 4


def _tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # one thread: the trained weights (and so the rounding flips the tolerances below allow for) must
    # not depend on the machine's core count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_fixture(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _train_fixture(tmp_path_factory):
    torch.manual_seed(0)
    root = write_image_folder(tmp_path_factory.mktemp("images"), num_classes=NUM_CLASSES,
                              images_per_class={"train": 40, "val": 75}, image_size=32, seed=0)
    datasets = build_imagenet_datasets(root, img_size=32)
    datasets["train"].transform = datasets["val"].transform  # no augmentation: a few steps must suffice
    train_x, train_y = _tensors(datasets["train"])
    val_x, val_y = _tensors(datasets["val"])
    supernet = Supernet.from_encoding("onnxw-151122-023231", num_classes=NUM_CLASSES, resolutions=[32])
    supernet.set_min()
    model = supernet.get_active_subnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def train(steps: int) -> None:
        model.train()
        for _ in range(steps):
            batch = torch.randint(0, len(train_x), (32,))
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()

    train(100)  # 40 steps reached only 77% top-1 with today's library versions (other JPEG bytes)
    set_quant_mode(model, 8)
    with torch.no_grad():
        model(train_x[:64])  # min-max initialisation, then a few LSQ+ steps move the scales
    train(5)
    snap_offsets_to_grid_(model)
    return model, train_x, val_x, val_y


def test_trained_subject_is_discriminative(trained):
    model, _, val_x, val_y = trained
    with torch.no_grad():
        predicted = model(val_x).argmax(1)
    assert len(val_x) == 300
    assert predicted.unique().numel() == NUM_CLASSES
    assert (predicted == val_y).float().mean() > 0.8


def _quantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(values / scale) + zero_point, 0, 255)


def _dequantize(levels: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (levels - zero_point) * scale


def test_clamp_activations_keep_the_next_grid_exact():
    """Q(act(DQ(Q(y)))) == Q(act(y)) for ReLU / ReLU6 on any grid: the rule behind learned output grids."""
    rng = np.random.default_rng(0)
    for scale, zero_point in [(0.02, 0), (0.05, 17), (0.031, 128)]:
        y = rng.normal(0, 4, 100_000)
        for act in (lambda v: np.maximum(v, 0), lambda v: np.clip(v, 0, 6)):
            twice = _quantize(act(_dequantize(_quantize(y, scale, zero_point), scale, zero_point)), scale, zero_point)
            np.testing.assert_array_equal(twice, _quantize(act(y), scale, zero_point))


def test_lsq_qdq_matches_fake_quant_model(trained, tmp_path):
    model, train_x, val_x, _ = trained
    result = export_lsq_qdq(model, tmp_path / "int8.onnx", [train_x[:64], train_x[64:128]])
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input": val_x.numpy()})[0]
    with torch.no_grad():
        torch_logits = model(val_x).numpy()
    agreement = (onnx_logits.argmax(1) == torch_logits.argmax(1)).mean()
    assert agreement >= 0.99
    assert np.abs(onnx_logits - torch_logits).mean() < 0.1 * torch_logits.std()
    assert result.quantized_ops == result.learned_output_grids + result.calibrated_output_grids + 1  # + the Gemm
    assert result.learned_output_grids > 0


def test_learned_grids_alone_reproduce_the_fake_quant_model(trained, tmp_path):
    """Without the extra output grids the graph computes the torch fake-quant model (rounding flips aside)."""
    model, train_x, val_x, _ = trained
    result = export_lsq_qdq(model, tmp_path / "exact.onnx", [train_x[:32]], quantize_float_outputs=False)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input": val_x.numpy()})[0]
    with torch.no_grad():
        torch_logits = model(val_x).numpy()
    assert np.abs(onnx_logits - torch_logits).max() < 0.05 * torch_logits.std()
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).all()


def test_exported_grids_are_the_learned_ones(trained, tmp_path):
    model, train_x, _, _ = trained
    path = export_lsq_qdq(model, tmp_path / "int8.onnx", [train_x[:32]]).path
    graph = onnx.load(str(path)).graph
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    # first conv input: the image's learned uint8 grid
    image_q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    act = model.first_conv[0].act_quant
    assert initializers[image_q.input[1]] == pytest.approx(abs(float(act.scale.detach())), rel=1e-6)
    assert int(initializers[image_q.input[2]]) == round(-float(act.offset.detach()) / abs(float(act.scale.detach())))
    # classifier (no BN to fold): int8 levels are LSQ+'s clamp(round(W / s_w), -128, 127)
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    weight_dq = next(n for n in graph.node if n.output[0] == gemm.input[1])
    expected = torch.clamp(torch.round(model.classifier.weight / model.classifier.weight_quant.scale.abs()), -128, 127)
    np.testing.assert_array_equal(initializers[weight_dq.input[0]], expected.detach().numpy().astype(np.int8))
    assert float(initializers[weight_dq.input[1]]) == pytest.approx(float(model.classifier.weight_quant.scale.detach().abs()))


def test_every_conv_runs_as_an_integer_kernel(trained, tmp_path):
    model, train_x, _, _ = trained
    result = export_lsq_qdq(model, tmp_path / "int8.onnx", [train_x[:32]])
    counts = optimized_op_counts(result.path)
    convs = result.quantized_ops - 1
    assert counts["QLinearConv"] == convs
    assert counts["QGemm"] == 1
    assert counts["Conv"] == counts["FusedConv"] == counts["Gemm"] == 0
    assert quantization_summary(result.path).fraction_quantized() == 1.0


def test_rejects_a_model_without_learned_scales(trained, tmp_path):
    _, train_x, _, _ = trained
    fp32 = Supernet.from_encoding("onnxw-151122-023231", num_classes=NUM_CLASSES, resolutions=[32])
    fp32.set_min()
    with pytest.raises(ValueError, match="8-bit mode"):
        export_lsq_qdq(fp32.get_active_subnet(), tmp_path / "x.onnx", [train_x[:4]])


def test_static_quantization_with_calibration_batches(trained, tmp_path):
    model, train_x, val_x, _ = trained
    fp32 = copy.deepcopy(model)
    set_quant_mode(fp32, None)
    path = quantize_with_calibration(fp32, tmp_path / "static.onnx", [train_x[i:i + 16] for i in range(0, 64, 16)])
    assert quantization_summary(path).fraction_quantized("Conv") == 1.0
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": val_x.numpy()})[0]
    with torch.no_grad():
        reference = fp32(val_x).numpy()
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.95
