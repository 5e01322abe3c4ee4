"""INT8 and BF16 fidelity of a pretrained ImageNet model on real images: every deployment route against FP32.

    python -m moonlit.spaceevo.fidelity                          # EfficientNet-Lite0, 10 photos + 1,000 FMNIST
    python -m moonlit.spaceevo.fidelity fidelity_scale=smoke     # minutes

Each route's logits on the evaluation set (the real photos and Fashion-MNIST *test* images shown as
RGB at the model's resolution, normalised as the model's timm ``pretrained_cfg``) are scored against
the FP32 torch model's (its run-time "same" pads fixed for the one input size, see
:func:`static_same_padding_`): top-1 agreement and mean KL(FP32 ‖ route) of the softmaxes, on the photos,
on Fashion-MNIST, on both, and on the "confident" images (FP32's top-1 probability beats the runner-up's
by ``confident_margin``: not near-ties). Routes: ORT FP32 (sanity), ORT static INT8 (:func:`export_static_int8`,
per-channel, one arm per calibration method; min-max with per-tensor weights; min-max with the N convs that
lose most on the *calibration* images kept in float), ORT dynamic INT8 (weights offline, activations per
batch; one arm per op-type list: ORT gives ConvInteger one weight scale per tensor even with
``per_channel``), torch BF16 autocast, and SpaceEvo's LSQ+ route (SpaceEvo §4.1):
every Conv2d/Linear becomes a QuantConv2d/QuantLinear with the same weights, min-max initialised on
the calibration images, a short QAT distils the FP32 model's logits on Fashion-MNIST *train* images
(their labels are not ImageNet classes), and :func:`export_lsq_qdq` writes the QDQ model, which is
scored against FP32 and against its own fake-quant model. Calibration uses Fashion-MNIST train
images only (all photos are scored); nothing is tuned on the scoring images.

The per-layer table compares every conv output of the static INT8 model (min-max), as the next layer
receives it (after its Q/DQ), with the FP32 graph's, as relative L2 over a few evaluation images;
adding those outputs keeps onnxruntime from fusing the QDQ convs, so each conv runs in float on
dequantized inputs (the same values up to the integer kernels' rounding). Latency: one image, one
thread, all arms interleaved (medians). OpenVINO routes are not covered here.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from moonlit.common.config import hydra_app, to_container
from moonlit.common.errors import InputError
from moonlit.common.export.int8 import export_static_int8, quantization_summary, quantize_dynamic_int8
from moonlit.common.export.onnx import export_onnx
from moonlit.common.models import create_model
from moonlit.common.profiling.compare import Arm, median_ms, time_arms
from moonlit.spaceevo.deploy import export_lsq_qdq, snap_offsets_to_grid_
from moonlit.spaceevo.ops.lsq_plus import QuantConv2d, QuantLinear, set_quant_mode

__all__ = ["EvalSet", "agreement", "mean_kl", "per_layer_error", "quantize_modules_", "render_table", "run",
           "score_routes", "static_same_padding_"]

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


# --- metrics -------------------------------------------------------------------------------------

def agreement(reference: np.ndarray, logits: np.ndarray) -> float:
    """Share of rows whose top-1 class equals the reference's."""
    _check_pair(reference, logits)
    return float((reference.argmax(1) == logits.argmax(1)).mean())


def mean_kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(reference) ‖ softmax(logits)) in nats."""
    _check_pair(reference, logits)
    log_p = torch.log_softmax(torch.as_tensor(reference, dtype=torch.float64), 1)
    log_q = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), 1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


def _check_pair(reference: np.ndarray, logits: np.ndarray) -> None:
    if reference.shape != logits.shape or reference.ndim != 2 or len(reference) == 0:
        raise InputError(f"logits of shape {logits.shape} vs reference {reference.shape}; expected equal (N, C), N > 0")


def confident(reference: np.ndarray, margin: float) -> np.ndarray:
    """Rows whose reference top-1 probability beats the runner-up's by at least ``margin`` (not near-ties)."""
    top2 = np.sort(torch.softmax(torch.as_tensor(reference, dtype=torch.float64), 1).numpy(), axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) >= margin


def score_routes(reference: np.ndarray, routes: dict[str, np.ndarray], groups: dict[str, np.ndarray]
                 ) -> dict[str, dict[str, float]]:
    """``{route: {"agreement/<group>": .., "kl/<group>": ..}}`` for every boolean row mask in ``groups``."""
    scores = {}
    for name, logits in routes.items():
        row = {}
        for group, mask in groups.items():
            if mask.any():
                row[f"agreement/{group}"] = agreement(reference[mask], logits[mask])
                row[f"kl/{group}"] = mean_kl(reference[mask], logits[mask])
        scores[name] = row
    return scores


# --- data ----------------------------------------------------------------------------------------

class EvalSet:
    """Photos (already transformed) followed by Fashion-MNIST images (uint8 28×28, transformed per batch)."""

    def __init__(self, photos: Tensor, photo_names: list[str], fmnist: Tensor, resolution: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.photos, self.photo_names, self.fmnist = photos, photo_names, fmnist
        self.resolution, self.mean, self.std = resolution, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.photos) + len(self.fmnist)

    @property
    def groups(self) -> dict[str, np.ndarray]:
        photos = np.arange(len(self)) < len(self.photos)
        return {"photos": photos, "fmnist": ~photos, "all": np.ones(len(self), bool)}

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[Tensor]:
        """The images in order, ``batch_size`` at a time (photos first)."""
        count = len(self) if limit is None else min(limit, len(self))
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            parts = []
            if start < len(self.photos):
                parts.append(self.photos[start:min(stop, len(self.photos))])
            if stop > len(self.photos):
                first = max(start - len(self.photos), 0)
                parts.append(grey_to_model_input(self.fmnist[first:stop - len(self.photos)], self.resolution,
                                                 self.mean, self.std))
            yield torch.cat(parts)


def grey_to_model_input(images: Tensor, resolution: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (N, H, W) grey images → normalised float (N, 3, resolution, resolution), bicubic resize."""
    x = images.float().div(255.0).unsqueeze(1)
    x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    x = x.expand(-1, 3, -1, -1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def load_photos(folder: Path, transform: Any) -> tuple[Tensor, list[str]]:
    """Every photo in ``folder`` (sorted by name) through the model's eval ``transform``."""
    from PIL import Image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise InputError(f"no photos ({'/'.join(PHOTO_SUFFIXES)}) in {folder}: run bash scripts/get_data.sh")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(transform(image.convert("RGB")))
    return torch.stack(images), [p.name for p in paths]


def load_fashion_mnist(root: Path, train: bool, start: int, count: int) -> Tensor:
    """uint8 (count, 28, 28) Fashion-MNIST images ``start:start+count`` of the train or test split."""
    from torchvision.datasets import FashionMNIST

    try:
        data = FashionMNIST(root=str(root), train=train, download=False).data
    except RuntimeError as error:
        raise InputError(f"Fashion-MNIST not found under {root} (expected FashionMNIST/raw/*-ubyte): "
                         f"run bash scripts/get_data.sh") from error
    if start < 0 or count < 1 or start + count > len(data):
        split = "train" if train else "test"
        raise InputError(f"Fashion-MNIST {split} images {start}:{start + count} are outside 0:{len(data)}")
    return data[start:start + count].clone()


# --- the LSQ+ route -------------------------------------------------------------------------------

def static_same_padding_(model: nn.Module, resolution: int) -> int:
    """Replace timm's Conv2dSame (TensorFlow "same" padding computed from the input's shape at run time) by a
    fixed ``ZeroPad2d`` + ``Conv2d`` for ``resolution``-pixel inputs; returns how many were replaced.

    The model computes the same function at that resolution. Exported as is, the pad sizes are float
    shape arithmetic (Shape → Cast → Div → Ceil → Sub) that onnxruntime's static quantization puts
    Q/DQ pairs on, which changes the pads (a 28×28 map becomes 27×27).
    """
    same = {module: name for name, module in model.named_modules() if type(module).__name__ == "Conv2dSame"}
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        sizes[module] = tuple(args[0].shape[-2:])

    hooks = [module.register_forward_pre_hook(record) for module in same]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        for hook in hooks:
            hook.remove()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child not in same:
                continue
            pads = []
            for size, kernel, stride, dilation in zip(sizes[child], child.kernel_size, child.stride, child.dilation):
                total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
                pads.append((total // 2, total - total // 2))
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, 0,
                             child.dilation, child.groups, child.bias is not None)
            conv.load_state_dict(child.state_dict())
            # ZeroPad2d takes (left, right, top, bottom)
            setattr(parent, name, nn.Sequential(nn.ZeroPad2d((*pads[1], *pads[0])), conv))
    return len(same)


def quantize_modules_(model: nn.Module) -> int:
    """Replace every Conv2d/Linear of ``model`` with an LSQ+ QuantConv2d/QuantLinear holding the same weights.

    Returns how many were replaced. Quantizers start in FP32 mode (see :func:`set_quant_mode`).
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (QuantConv2d, QuantLinear)):
                continue
            if type(child).__name__ == "Conv2dSame":
                raise InputError(f"conv {name!r} pads at run time (timm Conv2dSame); call static_same_padding_ first")
            if isinstance(child, nn.Conv2d):
                if not isinstance(child.padding, tuple) or len(set(child.kernel_size)) != 1 \
                        or len(set(child.stride)) != 1 or len(set(child.padding)) != 1:
                    raise InputError(f"conv {name!r} has kernel {child.kernel_size}, stride {child.stride}, padding "
                                     f"{child.padding}; QuantConv2d expects square kernels, strides and int padding")
                new = QuantConv2d(
                    child.in_channels, child.out_channels, child.kernel_size[0], child.stride[0], child.padding[0],
                    child.dilation[0], child.groups, child.bias is not None)
            elif isinstance(child, nn.Linear):
                new = QuantLinear(child.in_features, child.out_features, child.bias is not None)
            else:
                continue
            new.load_state_dict(child.state_dict(), strict=False)
            setattr(parent, name, new)
            count += 1
    return count


def lsq_qat(student: nn.Module, teacher: nn.Module, calibration: Tensor, train_images: Tensor, cfg: DictConfig,
            to_input: Any) -> list[float]:
    """Min-max init on ``calibration``, then ``cfg.steps`` KD steps (KL to the teacher's logits); returns the losses.

    BatchNorm statistics stay frozen (eval mode); weights, BN affine and LSQ+ scales/offsets are trained.
    """
    set_quant_mode(student, 8)
    student.eval()
    with torch.no_grad():
        student(calibration)  # each quantizer's grid spans its first batch (LSQ+ min-max init)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in tqdm(range(cfg.steps), desc="LSQ+ QAT", unit="step", disable=cfg.steps < 5):
        rows = torch.randint(0, len(train_images), (cfg.batch_size,), generator=generator)
        images = to_input(train_images[rows])
        with torch.no_grad():
            target = torch.log_softmax(teacher(images), 1)
        loss = F.kl_div(torch.log_softmax(student(images), 1), target, log_target=True, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    snap_offsets_to_grid_(student)
    return losses


# --- running routes --------------------------------------------------------------------------------

def torch_logits(model: nn.Module, batches: Iterator[Tensor], *, bf16: bool = False) -> np.ndarray:
    model.eval()
    outputs = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in batches:
            outputs.append(model(batch).float().numpy())
    return np.concatenate(outputs)


def ort_logits(path: Path, batches: Iterator[Tensor], threads: int) -> np.ndarray:
    from moonlit.common.profiling.backends import onnxruntime_session

    session = onnxruntime_session(path, threads=threads)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: batch.numpy()})[0] for batch in batches])


def per_layer_error(fp32_path: Path, int8_path: Path, batches: Iterator[Tensor], threads: int) -> list[dict]:
    """Relative L2 ``‖int8 − fp32‖ / ‖fp32‖`` of every conv output as the next layer receives it, in graph order.

    The INT8 side is the conv's DequantizeLinear output where a Q/DQ pair follows it (quantization removed a
    Clip/Relu after the conv, which the Q saturation replaces, and named the conv's output after it); the
    FP32 side is the tensor of the same name.
    """
    from moonlit.common.profiling.backends import onnxruntime_session

    fp32_model, int8_model = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    fp32_tensors = {name for node in fp32_model.graph.node for name in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in int8_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pairs = []  # (fp32 tensor, int8 tensor)
    for node in int8_model.graph.node:
        name = node.output[0]
        if node.op_type != "Conv" or name not in fp32_tensors:
            continue
        after = consumers.get(name, [])
        if len(after) == 1 and after[0].op_type == "QuantizeLinear":
            dequantize = [n for n in consumers.get(after[0].output[0], []) if n.op_type == "DequantizeLinear"]
            pairs.append((name, dequantize[0].output[0] if dequantize else name))
        else:
            pairs.append((name, name))
    if not pairs:
        raise ValueError(f"no Conv output of {int8_path.name} is named in {fp32_path.name}")
    sessions = []
    for model, names in ((fp32_model, [a for a, _ in pairs]), (int8_model, [b for _, b in pairs])):
        known = {output.name for output in model.graph.output}
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in known)
        session = onnxruntime_session(model.SerializeToString(), threads=threads)
        sessions.append((session, names))
    error_sq, norm_sq = np.zeros(len(pairs)), np.zeros(len(pairs))
    for batch in batches:
        fp32_out, int8_out = (s.run(names, {s.get_inputs()[0].name: batch.numpy()}) for s, names in sessions)
        for i, (reference, value) in enumerate(zip(fp32_out, int8_out)):
            error_sq[i] += float(((value.astype(np.float64) - reference) ** 2).sum())
            norm_sq[i] += float((reference.astype(np.float64) ** 2).sum())
    return [{"index": i, "tensor": name, "relative_l2": math.sqrt(e / max(n, 1e-30))}
            for i, ((name, _), e, n) in enumerate(zip(pairs, error_sq, norm_sq))]


def _calibration_sensitivity(model: nn.Module, fp32_path: Path, calibration: list[Tensor], work: Path,
                             threads: int) -> tuple[list[dict], list[str]]:
    """Per-conv relative L2 of the min-max static INT8 model on the *calibration* images, and the Conv node
    names ordered from the largest error down: the order the mixed-precision arms keep convs in float.

    The error is cumulative (each conv output carries the error of everything before it), so the order
    favours late convs on the residual stream; the scoring images never enter it.
    """
    fp32_copy = work / "sensitivity_fp32.onnx"
    int8 = export_static_int8(model, work / "sensitivity_int8.onnx", calibration, fp32_path=fp32_copy,
                              per_channel=True, calibrate_method="minmax", check=False)
    rows = per_layer_error(fp32_copy, int8, iter(calibration), threads)
    producer = {node.output[0]: node.name for node in onnx.load(str(fp32_copy)).graph.node if node.op_type == "Conv"}
    ranked = sorted(rows, key=lambda row: -row["relative_l2"])
    return rows, [producer[row["tensor"]] for row in ranked if row["tensor"] in producer]


class _Bf16(nn.Module):
    """``model`` under CPU bfloat16 autocast, logits back in float32 (the BF16 latency arm)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()


# --- report ----------------------------------------------------------------------------------------

def render_table(section: dict[str, Any]) -> str:
    """The markdown tables of a ``section.json``: routes, then the ten conv outputs that lose most."""
    latency = section.get("latency_ms", {})
    confident_header = f"agree confident ({section['confident_images']})" if "confident_images" in section else ""
    lines = ["| route | agree photos | agree FMNIST | agree all | KL photos | KL FMNIST | KL all | ms (1 thread) |"
             + (f" {confident_header} |" if confident_header else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if confident_header else "")]
    for route, row in section["routes"].items():
        cells = [f"{row.get(f'agreement/{g}', float('nan')):.2%}" for g in ("photos", "fmnist", "all")]
        cells += [f"{row.get(f'kl/{g}', float('nan')):.4f}" for g in ("photos", "fmnist", "all")]
        ms = latency.get(route)
        confident_cell = f" {row.get('agreement/confident', float('nan')):.2%} |" if confident_header else ""
        lines.append(f"| {route} | {' | '.join(cells)} | {'' if ms is None else f'{ms:.2f}'} |{confident_cell}")
    if section.get("lsq_export_vs_fake_quant"):
        vs = section["lsq_export_vs_fake_quant"]
        lines += ["", f"LSQ+ INT8 export vs its fake-quant model: agreement {vs['agreement/all']:.2%} "
                      f"(photos {vs['agreement/photos']:.2%}), mean KL {vs['kl/all']:.4f}"]
    exact = (section.get("lsq") or {}).get("float_outputs_vs_fake_quant")
    if exact:
        lines += [f"With float conv outputs where the trained model keeps them (quantize_float_outputs=False): "
                  f"agreement {exact['agreement/all']:.2%}, mean KL {exact['kl/all']:.6f}"]
    layers = sorted(section.get("per_layer", []), key=lambda row: -row["relative_l2"])[:10]
    if layers:
        lines += ["", "| conv output (static INT8, min-max) | position | relative L2 |", "|---|---:|---:|"]
        lines += [f"| `{row['tensor']}` | {row['index']} | {row['relative_l2']:.4f} |" for row in layers]
    return "\n".join(lines) + "\n"


def plot(section: dict[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.5))
    canvas = FigureCanvasAgg(figure)
    routes = list(section["routes"])
    ax_agree, ax_kl, ax_layer = figure.subplots(1, 3)
    positions = np.arange(len(routes))
    groups = [g for g in ("photos", "fmnist", "all", "confident")
              if any(f"agreement/{g}" in section["routes"][r] for r in routes)]
    width = 0.8 / len(groups)
    for index, group in enumerate(groups):
        ax_agree.bar(positions + (index - (len(groups) - 1) / 2) * width,
                     [section["routes"][r].get(f"agreement/{group}", 0) for r in routes], width, label=group)
    ax_agree.axhline(0.98, color="grey", linestyle="--", linewidth=0.8)
    ax_agree.set(title="top-1 agreement with FP32 (dashed: 98%)", ylim=(0.0, 1.2), xticks=positions)
    ax_agree.set_xticklabels(routes, rotation=60, ha="right", fontsize=7)
    ax_agree.legend(fontsize=6, ncol=4, loc="upper center")  # in the headroom above 1.0
    ax_kl.bar(positions, [section["routes"][r].get("kl/all", 0) for r in routes])
    ax_kl.set(title="mean KL(FP32 ‖ route), all images", yscale="log", xticks=positions)
    ax_kl.set_xticklabels(routes, rotation=60, ha="right", fontsize=7)
    layers = section.get("per_layer", [])
    ax_layer.plot([row["index"] for row in layers], [row["relative_l2"] for row in layers], marker=".")
    ax_layer.set(title="static INT8 conv outputs: relative L2", xlabel="conv position in graph")
    figure.tight_layout()
    canvas.print_png(str(path))
    return path


# --- the app ----------------------------------------------------------------------------------------

def fidelity(cfg: DictConfig) -> dict[str, Any]:
    """Build the sets, run every route, score, time, write ``section.json``, ``fidelity.md`` and ``fidelity.png``."""
    from timm.data import create_transform, resolve_data_config

    data_dir, out_dir = Path(cfg.data.root), Path(cfg.output_dir)
    unknown = [m for m in cfg.static_int8.calibrate_methods if m not in ("minmax", "percentile", "entropy")]
    if unknown:
        raise InputError(f"static_int8.calibrate_methods has {unknown}; expected minmax, percentile or entropy")
    if cfg.data.fmnist_eval < 1 or cfg.data.calibration < 1:
        raise InputError(f"data.fmnist_eval={cfg.data.fmnist_eval}, data.calibration={cfg.data.calibration}; "
                         "expected >= 1 each")
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, pretrained=True).eval()
    data_cfg = resolve_data_config({}, model=model)
    resolution, mean, std = data_cfg["input_size"][-1], data_cfg["mean"], data_cfg["std"]
    same_padding = static_same_padding_(model, resolution)  # the deployed model: one input size
    photos, photo_names = load_photos(data_dir / cfg.data.photos, create_transform(**data_cfg))
    fmnist_root = data_dir / cfg.data.fashion_mnist
    evalset = EvalSet(photos, photo_names, load_fashion_mnist(fmnist_root, False, 0, cfg.data.fmnist_eval),
                      resolution, mean, std)
    train = load_fashion_mnist(fmnist_root, True, 0, cfg.data.calibration + cfg.qat.train_images)
    to_input = lambda images: grey_to_model_input(images, resolution, mean, std)  # noqa: E731
    calibration = [to_input(train[i:i + cfg.batch_size]) for i in range(0, cfg.data.calibration, cfg.batch_size)]
    qat_images = train[cfg.data.calibration:]
    inputs = {"model": model, "evalset": evalset, "calibration": calibration, "qat_images": qat_images,
              "to_input": to_input, "same_padding": same_padding}
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.keep_onnx:
        (out_dir / "onnx").mkdir(exist_ok=True)
        return _routes_and_report(cfg, work=out_dir / "onnx", **inputs)
    with tempfile.TemporaryDirectory(prefix="moonlit-fidelity-") as work:
        return _routes_and_report(cfg, work=Path(work), **inputs)


def _routes_and_report(cfg: DictConfig, *, model: nn.Module, evalset: EvalSet, calibration: list[Tensor],
                       qat_images: Tensor, to_input: Any, same_padding: int, work: Path) -> dict[str, Any]:
    out_dir, resolution, mean, std = Path(cfg.output_dir), evalset.resolution, evalset.mean, evalset.std
    photo_names, threads = evalset.photo_names, cfg.threads

    def batches() -> Iterator[Tensor]:
        return tqdm(evalset.batches(cfg.batch_size), total=math.ceil(len(evalset) / cfg.batch_size),
                    desc="scoring", unit="batch", leave=False)

    reference = torch_logits(model, batches())
    groups = {**evalset.groups, "confident": confident(reference, float(cfg.confident_margin))}
    routes: dict[str, np.ndarray] = {"torch FP32": reference}
    fp32_path = export_onnx(model, calibration[0][:1], work / "fp32.onnx", output_names=["output"],
                            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, atol=1e-3, rtol=1e-2)
    routes["ORT FP32"] = ort_logits(fp32_path, batches(), threads)
    onnx_paths, quantization = {"ORT FP32": fp32_path}, {}
    for method in cfg.static_int8.calibrate_methods:
        name = f"ORT static INT8 ({method})"
        path = export_static_int8(model, work / f"static_{method}.onnx", calibration, per_channel=True,
                                  calibrate_method=method, check=False)
        onnx_paths[name], quantization[name] = path, quantization_summary(path).to_dict()
        routes[name] = ort_logits(path, batches(), threads)
    if cfg.static_int8.per_tensor_arm:  # one weight scale per tensor: the weights ORT's dynamic route gets
        name = "ORT static INT8 (minmax, per-tensor weights)"
        path = export_static_int8(model, work / "static_per_tensor.onnx", calibration, per_channel=False,
                                  calibrate_method="minmax", check=False)
        onnx_paths[name], quantization[name] = path, quantization_summary(path).to_dict()
        routes[name] = ort_logits(path, batches(), threads)
    sensitivity = []
    if cfg.static_int8.float_sensitive:
        sensitivity, ranked = _calibration_sensitivity(model, fp32_path, calibration, work, threads)
        for count in cfg.static_int8.float_sensitive:
            name = f"ORT static INT8 (minmax, {count} convs float)"
            path = export_static_int8(model, work / f"static_float{count}.onnx", calibration, per_channel=True,
                                      calibrate_method="minmax", check=False, nodes_to_exclude=ranked[:count])
            onnx_paths[name], quantization[name] = path, quantization_summary(path).to_dict()
            routes[name] = ort_logits(path, batches(), threads)
    if cfg.dynamic_int8:
        for op_types in cfg.dynamic_int8_op_types:
            name = "ORT dynamic INT8" + ("" if "Conv" in op_types else f" ({'/'.join(op_types)} only)")
            path = quantize_dynamic_int8(fp32_path, work / f"dynamic_{'_'.join(op_types)}.onnx",
                                         op_types=tuple(op_types), preprocess=True)
            onnx_paths[name], quantization[name] = path, quantization_summary(path).to_dict()
            routes[name] = ort_logits(path, batches(), threads)
    if cfg.bf16:
        routes["torch BF16 autocast"] = torch_logits(model, batches(), bf16=True)

    lsq: dict[str, Any] = {}
    if cfg.qat.enabled:
        import copy

        student = copy.deepcopy(model)
        replaced = quantize_modules_(student)
        losses = lsq_qat(student, model, torch.cat(calibration), qat_images, cfg.qat, to_input)
        routes["LSQ+ fake-quant (torch)"] = fake_quant = torch_logits(student, batches())
        export = export_lsq_qdq(student, work / "lsq_int8.onnx", calibration)
        onnx_paths["LSQ+ INT8 (ORT)"] = export.path
        quantization["LSQ+ INT8 (ORT)"] = quantization_summary(export.path).to_dict()
        routes["LSQ+ INT8 (ORT)"] = ort_logits(export.path, batches(), threads)
        lsq = {"replaced_modules": replaced, "qat_steps": len(losses), "kd_loss_first": losses[:5],
               "kd_loss_last": losses[-5:], "export": export.to_dict(),
               "vs_fake_quant": score_routes(fake_quant, {"x": routes["LSQ+ INT8 (ORT)"]}, groups)["x"]}
        if cfg.qat.float_outputs_arm:  # the conv outputs the trained model keeps in float stay float: exact
            name = "LSQ+ INT8 (ORT, float outputs)"
            path = export_lsq_qdq(student, work / "lsq_float_outputs.onnx", calibration,
                                  quantize_float_outputs=False).path
            onnx_paths[name], quantization[name] = path, quantization_summary(path).to_dict()
            routes[name] = ort_logits(path, batches(), threads)
            lsq["float_outputs_vs_fake_quant"] = score_routes(fake_quant, {"x": routes[name]}, groups)["x"]

    layers = []
    if cfg.static_int8.calibrate_methods:
        first_static = onnx_paths[f"ORT static INT8 ({cfg.static_int8.calibrate_methods[0]})"]
        layers = per_layer_error(fp32_path, first_static,
                                 evalset.batches(cfg.per_layer.batch_size, cfg.per_layer.images), threads)
    example = calibration[0][:1]
    arms = {"torch FP32": Arm("torch", model, [example]),
            **{name: Arm("onnxruntime", path, [example]) for name, path in onnx_paths.items()}}
    if cfg.bf16:
        arms["torch BF16 autocast"] = Arm("torch", _Bf16(model), [example])
    comparison = time_arms(arms, threads=cfg.latency.threads, rounds=cfg.latency.rounds, warmup=cfg.latency.warmup,
                           baseline="ORT FP32")
    section = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": cfg.model, "resolution": resolution,
        "static_same_padding_convs": same_padding,
        "mean": list(mean), "std": list(std),
        "images": {"photos": photo_names, "fmnist_test": len(evalset.fmnist), "calibration_fmnist_train":
                   cfg.data.calibration, "qat_fmnist_train": len(qat_images)},
        "routes": score_routes(reference, routes, groups),
        "confident_margin": float(cfg.confident_margin), "confident_images": int(groups["confident"].sum()),
        "calibration_sensitivity": sensitivity,
        "lsq_export_vs_fake_quant": lsq.get("vs_fake_quant"), "lsq": lsq, "quantization": quantization,
        "per_layer": layers, "latency_ms": median_ms(comparison), "latency": comparison.to_dict(),
        "config": to_container(cfg),
    }
    (out_dir / "section.json").write_text(json.dumps(section, indent=1, default=str) + "\n")
    (out_dir / "fidelity.md").write_text(render_table(section))
    plot(section, out_dir / "fidelity.png")
    log.info("fidelity of %s written to %s", cfg.model, out_dir)
    return section


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app's work (what ``main`` runs): :func:`fidelity`."""
    return fidelity(cfg)


@hydra_app("spaceevo", "fidelity")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
