"""CPU latency of physically token-pruned BERT against the dense model (ToP, KDD'23, §5 speedup on CPU).

The paper reports "a real latency speedup of up to 7.4x on an Intel CPU". This benchmark measures
what token dropping (:mod:`.inference`, :mod:`.export`) buys on this machine, with random weights
(latency does not depend on them) and BERT-base dimensions by default:

* **keep schedules** (:mod:`.keep_schedules`): for each target MAC reduction (2x, 4x, 8x vs the
  dense model on the same real input), 0/1 gates that prune at every layer from
  ``first_prune_layer`` on with one keep ratio rho for all locations. rho is found by bisection on
  the ToP MAC model (``constraint.encoder_macs`` of ``constraint.expected_lengths``), then snapped to
  ``k`` of ``bin_num`` rank bins: of the two neighbours of ``rho * bin_num`` the one whose *integer*
  kept counts (a location keeps ``ceil(k * c / bin_num)`` of its ``c`` candidates,
  ``masks.rank_to_bin``) come closest to the target. Learned schedules come from saved pruned models
  (``schedules_from``).
* **arms** per (batch size, input length, schedule), timed together with
  ``common.profiling.compare_many`` (interleaved rounds, medians, pinned threads): dense HF torch,
  pruned torch (``TokenDroppingModel``), dense ONNX Runtime, pruned ONNX Runtime
  (``export_pruned_onnx``), with ``int8`` their dynamic-INT8 ORT variants, and with ``openvino`` the same
  ONNX files in OpenVINO (``common.profiling.openvino``) at FP32 / BF16 and, for ``int8``, a static QDQ
  model whose MatMuls (weights per channel, activations calibrated on a few random batches of the
  input's lengths) the CPU plugin runs as u8/i8 kernels. Each row also names the fastest pruned arm and
  its speed-up over dense ORT FP32 (the deployment baseline).
* **padded inputs** (``padded_inputs: [[real, padded]]``, e.g. CoLA-like 11 -> 64): every sample
  holds ``real`` tokens padded to ``padded``; speedups are then against the padded dense model,
  the baseline the paper's FLOPs reductions use.

Outputs ``results.json``, ``table.md`` (``common.report.render_table``), ``speedup.png`` and a
report ``section.json`` under the Hydra run dir ``outputs/top/benchmark/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm
from transformers import BertConfig, BertForSequenceClassification

from moonlit.common.config import hydra_app, to_container
from moonlit.common.errors import InputError
from moonlit.common.export.int8 import quantize_dynamic_int8, quantize_static_int8
from moonlit.common.export.onnx import export_onnx
from moonlit.common.profiling import compare_many, make_runner
from moonlit.common.report import render_table, write_section

from .constraint import EncoderDims, encoder_macs
from .export import LogitsOnly, export_pruned_onnx, quantize_pruned_dynamic
from .inference import TokenDroppingModel
from .keep_schedules import KeepSchedule, learned_schedule, uniform_schedule
from .model import ToPModel

__all__ = ["build_model", "make_inputs", "run", "run_benchmark"]

logger = logging.getLogger(__name__)


def build_model(model_cfg: DictConfig | dict[str, Any], seed: int = 0) -> BertForSequenceClassification:
    """A randomly initialised BertForSequenceClassification (no download) with eager attention, in eval mode."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=int(model_cfg["vocab_size"]), hidden_size=int(model_cfg["hidden_size"]),
        num_hidden_layers=int(model_cfg["num_layers"]), num_attention_heads=int(model_cfg["num_heads"]),
        intermediate_size=int(model_cfg["intermediate_size"]),
        max_position_embeddings=int(model_cfg["max_position_embeddings"]), num_labels=int(model_cfg["num_labels"]),
    )
    config._attn_implementation = "eager"  # the paper's baseline; ToPModel computes attention itself anyway
    return BertForSequenceClassification(config).eval()


def make_inputs(batch: int, real_length: int, padded_length: int, *, vocab_size: int, cls_id: int, sep_id: int,
                pad_id: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """``[CLS] random ids [SEP]`` of ``real_length`` tokens per sample, padded to ``padded_length``."""
    if not 2 <= real_length <= padded_length:
        raise ValueError(f"need 2 <= real_length <= padded_length, got real {real_length}, padded {padded_length}")
    low = max(cls_id, sep_id, pad_id) + 1
    if low >= vocab_size:
        raise ValueError(f"vocab_size {vocab_size} leaves no ordinary token ids above the special ids ({low - 1})")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, padded_length), pad_id, dtype=torch.long)
    ids[:, 1 : real_length - 1] = torch.randint(low, vocab_size, (batch, real_length - 2), generator=generator)
    ids[:, 0], ids[:, real_length - 1] = cls_id, sep_id
    mask = torch.zeros((batch, padded_length), dtype=torch.long)
    mask[:, :real_length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _macs(lengths: Sequence[int], dims: EncoderDims) -> float:
    return float(encoder_macs(list(lengths), dims))


def _export_example(cfg: DictConfig, real_length: int, padded_length: int) -> dict[str, torch.Tensor]:
    """Two samples of different lengths: the export check then sees padding and a second length."""
    batch = make_inputs(2, real_length, padded_length, vocab_size=cfg.model.vocab_size, cls_id=cfg.model.cls_id,
                        sep_id=cfg.model.sep_id, seed=cfg.seed + 1)
    shorter = max(2, real_length - max(1, real_length // 4))
    batch["input_ids"][1, shorter - 1 :] = 0
    batch["input_ids"][1, shorter - 1] = cfg.model.sep_id
    batch["attention_mask"][1, shorter:] = 0
    return batch


@dataclasses.dataclass(frozen=True)
class InputCase:
    """Every sample holds ``real_length`` tokens padded to ``padded_length``, timed at each (batch, rounds)."""

    real_length: int
    padded_length: int
    batches: tuple[tuple[int, int], ...]
    profile: str | None = None  # the GLUE task whose length profile this is


def _input_cases(cfg: DictConfig) -> list[InputCase]:
    if len(cfg.batch_sizes) != len(cfg.rounds_per_batch):
        raise ValueError(f"rounds_per_batch {list(cfg.rounds_per_batch)} needs one entry per batch size "
                         f"{list(cfg.batch_sizes)}")
    if len(cfg.profile_batch_sizes) != len(cfg.profile_rounds):
        raise ValueError(f"profile_rounds {list(cfg.profile_rounds)} needs one entry per profile batch size "
                         f"{list(cfg.profile_batch_sizes)}")
    main = tuple((int(b), int(r)) for b, r in zip(cfg.batch_sizes, cfg.rounds_per_batch))
    cases = [InputCase(int(n), int(n), main) for n in cfg.seq_lengths]
    for pair in cfg.padded_inputs:
        if len(pair) != 2:
            raise ValueError(f"padded_inputs entries are [real, padded] pairs, got {list(pair)}")
        cases.append(InputCase(int(pair[0]), int(pair[1]), main))
    profile = tuple((int(b), int(r)) for b, r in zip(cfg.profile_batch_sizes, cfg.profile_rounds))
    for task, pair in (cfg.task_profiles or {}).items():
        if len(pair) != 2:
            raise ValueError(f"task_profiles.{task} must be [mean real length, padded length], got {list(pair)}")
        cases.append(InputCase(int(pair[0]), int(pair[1]), profile, profile=str(task)))
    cases = [case for case in cases if case.batches]
    if not cases:
        raise ValueError("nothing to benchmark: seq_lengths, padded_inputs and task_profiles are all empty")
    return cases


def _learned_schedules(cfg: DictConfig, num_layers: int, skipped: list[dict[str, Any]]) -> list[KeepSchedule]:
    entries = cfg.schedules_from or []
    named = entries.items() if isinstance(entries, Mapping) else ((None, folder) for folder in entries)
    schedules = []
    for name, folder in named:
        if not (Path(folder) / "token_pruning.json").is_file():
            if cfg.require_schedules:
                raise FileNotFoundError(f"schedules_from: {folder} is not a saved pruned model (no token_pruning.json)")
            logger.warning("no saved pruned model at %s: its learned schedule is skipped (run the ToP quickstart or "
                           "prune first, or set schedules_from)", folder)
            skipped.append({"schedules_from": str(folder), "reason": "no saved pruned model there"})
            continue
        schedules.append(learned_schedule(folder, num_layers, name))
    return schedules


def run_benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Build the model and schedules, time every arm, write results.json / table.md / speedup.png."""
    cases = _input_cases(cfg)
    for key in ("targets", "profile_targets"):  # checked before any model is built or file written
        for target in cfg.get(key) or ():
            if isinstance(target, bool) or not isinstance(target, (int, float)) or not target >= 1:
                raise InputError(f"{key} holds {target!r}; expected MAC reductions as numbers >= 1 (dense = 1)")
    ov_precisions = _openvino_precisions(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_model = build_model(cfg.model, cfg.seed)
    dims = EncoderDims.from_config(hf_model.config)
    special = (int(cfg.model.cls_id), int(cfg.model.sep_id))
    first = int(cfg.first_prune_layer)
    if not 1 <= first < dims.num_layers:
        raise ValueError(f"first_prune_layer must lie in [1, {dims.num_layers - 1}], got {first}")
    prune_layers = tuple(range(first, dims.num_layers))
    skipped: list[dict[str, Any]] = []
    learned = _learned_schedules(cfg, dims.num_layers, skipped)

    onnx_dir = out / "onnx"
    dense_onnx: dict[str, Path] = {}
    if cfg.onnxruntime:
        example = _export_example(cfg, cases[0].real_length, cases[0].padded_length)
        dense_onnx["fp32"] = export_onnx(LogitsOnly(hf_model), example, onnx_dir / "dense.onnx",
                                         output_names=["logits"],
                                         dynamic_axes={name: {0: "batch", 1: "sequence"} for name in example})
        if cfg.int8:
            dense_onnx["int8"] = quantize_dynamic_int8(dense_onnx["fp32"], onnx_dir / "dense_int8.onnx")
        if "int8" in ov_precisions:
            dense_onnx["qdq"] = _static_qdq(cfg, dense_onnx["fp32"], onnx_dir / "dense_qdq.onnx", cases[0])
    pruned_onnx: dict[tuple, dict[str, Path]] = {}

    records = []
    # one bar over the timed measurements; each one's arms and rounds show beside it
    bar = tqdm(total=sum(len(case.batches) for case in cases), desc="ToP benchmark", unit="measurement")
    for case in cases:
        real_length, padded_length = case.real_length, case.padded_length
        schedules = []
        for target in (cfg.profile_targets if case.profile else cfg.targets):
            try:
                schedules.append(uniform_schedule(float(target), real_length, len(special), dims, prune_layers,
                                                  int(cfg.bin_num)))
            except ValueError as error:  # e.g. 8x at a CoLA-like length of 11: recorded, not fatal
                logger.warning("skipping target %s at length %d: %s", target, real_length, error)
                skipped.append({"target_reduction": float(target), "real_length": real_length, "reason": str(error)})
        schedules += learned
        tops = {s.name: ToPModel(hf_model, s.pruning(special)).eval() for s in schedules}
        for s in schedules:
            key = (s.prune_layers, s.bin_num, s.kept_bins)
            if cfg.onnxruntime and key not in pruned_onnx:
                stem = f"pruned_{len(pruned_onnx)}"
                example = _export_example(cfg, real_length, padded_length)
                paths = {"fp32": export_pruned_onnx(tops[s.name], onnx_dir / f"{stem}.onnx",
                                                    gate_values=s.gate_values(), example_batch=example)}
                if cfg.int8:
                    paths["int8"] = quantize_pruned_dynamic(paths["fp32"], onnx_dir / f"{stem}_int8.onnx")
                if "int8" in ov_precisions:
                    paths["qdq"] = _static_qdq(cfg, paths["fp32"], onnx_dir / f"{stem}_qdq.onnx", case)
                pruned_onnx[key] = paths
        for batch, rounds in case.batches:
            inputs = make_inputs(batch, real_length, padded_length, vocab_size=cfg.model.vocab_size,
                                 cls_id=special[0], sep_id=special[1], seed=cfg.seed)
            bar.set_postfix_str(f"batch {batch}, length {real_length} (padded {padded_length})")
            record = _measure_case(cfg, hf_model, dims, tops, schedules, inputs, rounds, dense_onnx, pruned_onnx,
                                   real_length, padded_length, ov_precisions)
            records.append({"profile": case.profile, **record})
            bar.update()
    bar.close()
    results = {"config": to_container(cfg), "dims": dataclasses.asdict(dims), "cases": records, "skipped": skipped,
               "openvino_precisions": ov_precisions}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = _table(records, _backends(cfg, ov_precisions))
    (out / "table.md").write_text(render_table(table) + "\n")
    _plot(records, out / "speedup.png")
    write_section(out, {"name": "top_benchmark", "title": "ToP: CPU latency of physical token dropping",
                        "command": "python -m moonlit.top.benchmark", "tables": [table],
                        "figures": [{"path": "speedup.png", "caption": "speedup vs MAC reduction (y = x dashed)"}]})
    logger.info("wrote %s", out / "results.json")
    return results


def _measure_case(cfg: DictConfig, hf_model: nn.Module, dims: EncoderDims, tops: dict[str, ToPModel],
                  schedules: list[KeepSchedule], inputs: dict[str, torch.Tensor], rounds: int,
                  dense_onnx: dict[str, Path], pruned_onnx: dict[tuple, dict[str, Path]],
                  real_length: int, padded_length: int, ov_precisions: Sequence[str] = ()) -> dict[str, Any]:
    """One compare_many over every arm of one (batch, input) case, plus each schedule's kept counts."""
    threads = int(cfg.threads)

    def engine_arms(prefix: str, paths: dict[str, Path]) -> dict[str, Any]:
        arms = {f"{prefix}/ort_{precision}": make_runner("onnxruntime", paths[precision], inputs, threads=threads)
                for precision in ("fp32", "int8") if precision in paths}
        for precision in ov_precisions:
            path = paths["qdq"] if precision == "int8" else paths["fp32"]
            arms[f"{prefix}/ov_{precision}"] = make_runner("openvino", path, inputs, threads=threads,
                                                           precision=precision)
        return arms

    arms = {"dense/torch": make_runner("torch", hf_model, inputs, threads=threads), **engine_arms("dense", dense_onnx)}
    per_schedule = []
    for s in schedules:
        gates = s.gate_values()
        dropping = TokenDroppingModel(tops[s.name]).eval()
        with torch.inference_mode():
            dropped = dropping(**inputs, gate_values=gates)
            masked = tops[s.name](**inputs, gate_values=gates)
        kept = dropped.kept_counts.double().mean(dim=0).tolist()  # identical rows: every sample has the same length
        # What really runs: layers before the first pruning location still see the padded length.
        physical = [padded_length if layer < s.prune_layers[0] else n for layer, n in enumerate(kept)]
        per_schedule.append({
            **dataclasses.asdict(s), "kept_counts": dropped.kept_counts.tolist(), "mean_kept_per_layer": kept,
            "mac_reduction": _macs([real_length] * dims.num_layers, dims) / _macs(kept, dims),
            "mac_reduction_vs_padded": _macs([padded_length] * dims.num_layers, dims) / _macs(physical, dims),
            "max_abs_logit_diff_vs_masked": float((dropped.logits - masked.logits).abs().max()),
        })
        arms[f"{s.name}/torch"] = make_runner("torch", dropping, {**inputs, "gate_values": gates}, threads=threads)
        paths = pruned_onnx.get((s.prune_layers, s.bin_num, s.kept_bins))
        if paths:
            arms.update(engine_arms(s.name, paths))
    batch = int(inputs["input_ids"].shape[0])
    logger.debug("timing batch %d, length %d (padded %d): %d arms x %d rounds", batch, real_length, padded_length,
                len(arms), rounds)
    comparison = compare_many(arms, rounds=rounds, warmup=int(cfg.warmup), baseline="dense/torch")
    medians = {name: result.median_ms for name, result in comparison.results.items()}
    for entry in per_schedule:
        backends = [name.split("/", 1)[1] for name in medians if name.startswith("dense/")]
        entry["speedup"] = {backend: medians[f"dense/{backend}"] / medians[f"{entry['name']}/{backend}"]
                            for backend in backends if f"{entry['name']}/{backend}" in medians}
        pruned = {backend: medians[f"{entry['name']}/{backend}"] for backend in entry["speedup"]}
        if pruned and "dense/ort_fp32" in medians:  # the deployment question: best pruned arm vs dense ORT FP32
            best = min(pruned, key=pruned.__getitem__)
            entry["best_pruned"] = {"backend": best, "median_ms": pruned[best],
                                    "speedup_vs_dense_ort_fp32": medians["dense/ort_fp32"] / pruned[best]}
    return {"batch_size": batch, "real_length": real_length, "padded_length": padded_length,
            "median_ms": medians, "schedules": per_schedule, "timing": comparison.to_dict()}


def _backends(cfg: DictConfig, ov_precisions: Sequence[str]) -> list[str]:
    """The timed engines/precisions, in table order."""
    if not cfg.onnxruntime:
        return ["torch"]
    return ["torch", "ort_fp32", *(["ort_int8"] if cfg.int8 else []), *(f"ov_{p}" for p in ov_precisions)]


def _table(records: list[dict[str, Any]], backends: Sequence[str]) -> dict[str, Any]:
    columns = ["input", "batch", "length", "padded", "schedule", "target", "MAC red.", "MAC red. vs padded"]
    for backend in backends:
        columns += [f"{backend} dense ms", f"{backend} pruned ms", f"{backend} speedup"]
    best = any("best_pruned" in entry for record in records for entry in record["schedules"])
    if best:
        columns += ["best pruned arm", "best vs dense ort_fp32"]
    rows = []
    for record in records:
        for entry in record["schedules"]:
            row = [record.get("profile") or "fixed", record["batch_size"], record["real_length"],
                   record["padded_length"], entry["name"], entry["target_reduction"], entry["mac_reduction"],
                   entry["mac_reduction_vs_padded"]]
            for backend in backends:
                row += [record["median_ms"][f"dense/{backend}"], record["median_ms"][f"{entry['name']}/{backend}"],
                        entry["speedup"][backend]]
            if best:
                row += [entry["best_pruned"]["backend"], entry["best_pruned"]["speedup_vs_dense_ort_fp32"]]
            rows.append(row)
    return {"caption": "Median latency (ms), 1-thread CPU, interleaved rounds; speedup = dense / pruned on the "
                       "same engine and precision; best = fastest pruned arm against dense ONNX Runtime FP32",
            "source": "results.json (moonlit.top.benchmark)", "columns": columns, "rows": rows, "floatfmt": ".3g"}


def _openvino_precisions(cfg: DictConfig) -> list[str]:
    """``cfg.openvino`` checked: known precisions; those this CPU lacks are left out with a warning."""
    wanted = [str(p) for p in (cfg.get("openvino") or [])]
    if not wanted:
        return []
    from moonlit.common.profiling.openvino import PRECISIONS, supported_precisions

    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown:
        raise InputError(f"openvino holds {unknown}; expected precisions among {list(PRECISIONS)}")
    if not cfg.onnxruntime:
        raise InputError("openvino arms time the exported ONNX models; they need onnxruntime=true")
    native = supported_precisions()
    for precision in wanted:
        if precision not in native:
            logger.warning("OpenVINO %s is left out: this CPU's OPTIMIZATION_CAPABILITIES lack it", precision)
    return [p for p in wanted if p in native]


def _static_qdq(cfg: DictConfig, fp32_path: Path, out_path: Path, case: InputCase) -> Path:
    """Static QDQ INT8 of the exported model's MatMuls for OpenVINO's INT8 arms: weights per channel,
    activation ranges from ``cfg.openvino_calibration`` random batches of the case's lengths (latency
    does not depend on the ranges; the weights are random too)."""
    batches = [{name: tensor.numpy() for name, tensor in
                make_inputs(8, case.real_length, case.padded_length, vocab_size=cfg.model.vocab_size,
                            cls_id=cfg.model.cls_id, sep_id=cfg.model.sep_id, seed=cfg.seed + 100 + i).items()}
               for i in range(int(cfg.openvino_calibration))]
    # quant_pre_process's symbolic shape inference cannot follow the dynamic sequence axis through HF's mask
    # arithmetic ("Incomplete symbolic shape inference"); the MatMul weights' QDQ do not need it
    return quantize_static_int8(fp32_path, out_path, batches, op_types_to_quantize=["MatMul"], per_channel=True,
                                preprocess=False)


def _plot(records: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    top = 1.0
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        padded = record["padded_length"] != record["real_length"]
        for entry in record["schedules"]:
            x = entry["mac_reduction_vs_padded"] if padded else entry["mac_reduction"]
            for backend, speedup in entry["speedup"].items():
                label = f"{backend}, batch {record['batch_size']}" + (" (padded)" if padded else "")
                xs, ys = series.setdefault(label, ([], []))
                xs.append(x)
                ys.append(speedup)
                top = max(top, x, speedup)
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, "o", label=label)
    axes.plot([1, top], [1, top], "--", color="gray", label="y = x")
    axes.set_xlabel("MAC reduction (x)")
    axes.set_ylabel("measured speedup (x)")
    axes.set_title("ToP token dropping on CPU")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.top.benchmark``: :func:`run_benchmark`'s result."""
    return run_benchmark(cfg)


@hydra_app("top", "benchmark")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO)
    results = run(cfg)
    print((Path(cfg.output_dir) / "table.md").read_text())
    logger.info("%d cases measured", len(results["cases"]))


if __name__ == "__main__":
    main()
