"""Stage 4 of :mod:`moonlit.spaceevo.fmnist`: subnet search under a latency limit, INT8 export, test top-1.

The search (SpaceEvo Sec. 4 "subnet search") reuses :mod:`moonlit.spaceevo.subnet_search`'s problem,
fitness (INT8 fake-quant top-1 on held-out train images after BN recalibration) and evolution. Its
constraint (``subnet_search.constraint``):

- ``latency``: the latency the LUTs were built with, the constant ms-per-MFLOP table
  (:class:`moonlit.spaceevo.lut_builder.ConstantLatency`) summed over the searchable stages' blocks
  (:class:`ConstantTableLatency`) plus the Q-T score's ``other_latency_ms`` for first_conv, stage0 and
  the head, in a band ``subnet_search.band`` of the way from the smallest subnet's latency to the largest's;
- ``macs``: the same band over MMACs (``subnet_search.py``'s ``constraint.kind=macs``); with a LitePred
  predictor, ``search_overrides=[constraint.kind=latency,...]`` over it uses the predicted latency.

The best subnet, BN recalibrated as the search scored it and its activation offsets snapped to the
exportable grid, is exported with its learned LSQ+ grids (:func:`moonlit.spaceevo.deploy.export_lsq_qdq`)
and scored on the test images as ONNX INT8, fake-quant torch and FP32 torch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from moonlit.common.config import compose_config, to_container
from moonlit.common.nas import BandConstraint, EvolutionConfig, EvolutionSearch
from moonlit.common.profiling.flops import count_macs

from .deploy import export_lsq_qdq, snap_offsets_to_grid_
from .latency import subnet_parts
from .lut_builder import ConstantLatency
from .ops.lsq_plus import set_quant_mode
from .quickstart_deploy import onnx_logits
from .space import SpaceEncoding, SubnetEncoding, max_subnet, min_subnet
from .subnet_search import SubnetComplexity, SupernetFitness, build_data, build_problem, load_supernet, run_search

__all__ = ["CONSTRAINTS", "ConstantTableLatency", "deploy_subnet", "search_subnet"]

CONSTRAINTS = ("latency", "macs")


class ConstantTableLatency:
    """Latency (ms) of subnets of ``space`` from a constant ms-per-MFLOP table, as the LUTs priced sub-stages.

    ``other_ms``: first_conv + stage0 + head at each of ``lut_resolutions`` (the Q-T score's constants).
    """

    def __init__(self, space: SpaceEncoding, table: ConstantLatency, other_ms: Sequence[float],
                 lut_resolutions: Sequence[int], num_classes: int, resolutions: Sequence[int]) -> None:
        self.space, self.table, self.num_classes, self.resolutions = space, table, num_classes, list(resolutions)
        self.other_ms = dict(zip((int(r) for r in lut_resolutions), (float(v) for v in other_ms)))
        self._mflops: dict[str, float] = {}

    def __call__(self, subnets: Sequence[SubnetEncoding]) -> np.ndarray:
        return np.array([self.latency_ms(s) for s in subnets])

    def latency_ms(self, subnet: SubnetEncoding) -> float:
        if subnet.resolution not in self.other_ms:
            raise ValueError(f"resolution {subnet.resolution} has no other-latency constant; expected one of "
                             f"{sorted(self.other_ms)}")
        parts = subnet_parts(self.space, subnet, self.num_classes, self.resolutions)
        depths = [len(blocks) for blocks in subnet.stages()]
        # parts: first_conv, then stage0's blocks, then stages 1-6's, then the head
        index, total = 1 + depths[1], self.other_ms[subnet.resolution]
        for stage, depth in enumerate(depths[2:]):
            block_type = self.space.spec.block_types[self.space.blocks[stage]].type
            for part in parts[index: index + depth]:
                if part.key not in self._mflops:
                    with torch.device("meta"):
                        module = part.build()
                    report = count_macs(module.to_empty(device="cpu"), torch.zeros(part.input_shape))
                    self._mflops[part.key] = report.macs / 1e6
                total += self.table(None, part.input_shape, block_type, self._mflops[part.key])
            index += depth
        return total


def _band(measure: Any, space: SpaceEncoding, resolution: int, fractions: Sequence[float]) -> tuple[float, float]:
    smallest, largest = (float(measure(extreme(space, resolution))) for extreme in (min_subnet, max_subnet))
    low, high = (float(f) for f in fractions)
    return smallest + low * (largest - smallest), smallest + high * (largest - smallest)


def search_subnet(cfg: DictConfig, space: SpaceEncoding, qat_checkpoint: str, out: Path) -> dict[str, Any]:
    """The subnet search on the QAT supernet under ``subnet_search.constraint``'s band; the best record."""
    ss, data, resolution = cfg.subnet_search, cfg.data, int(cfg.resolution)
    complexity = SubnetComplexity(space, 10, [resolution])
    macs_low, macs_high = _band(lambda s: complexity(s)[0] / 1e6, space, resolution, ss.band)
    overrides = [
        f"space={space}", "fitness=supernet", f"checkpoint={qat_checkpoint}", "quantized=true", "num_classes=10",
        f"resolutions=[{resolution}]", f"bn_batches={ss.bn_batches}", "constraint.kind=macs",
        f"constraint.max_mmacs={macs_high}", f"constraint.min_mmacs={macs_low}",
        f"evolution.population={ss.population}", f"evolution.parents={ss.parents}",
        f"evolution.mutations={ss.mutations}", f"evolution.crossovers={ss.crossovers}",
        f"evolution.iterations={ss.iterations}", f"evolution.seed={cfg.seed}", "resume=true", f"output_dir={out}",
        f"paths.data_dir={cfg.paths.data_dir}", f"paths.output_root={cfg.paths.output_root}", "data=fashion_mnist",
        f"data.root={data.root}", f"data.img_size={resolution}", f"data.normalization={data.normalization}",
        f"data.train_subset={'null' if data.train_subset is None else data.train_subset}",
        f"data.holdout_per_class={data.holdout_per_class}", f"data.batch_size={ss.batch_size}", "data.num_workers=0",
        f"data.seed={cfg.seed}", "data.cache=true", *ss.search_overrides]
    search_cfg = compose_config("spaceevo", "subnet_search", overrides)
    common = {"data": OmegaConf.to_container(search_cfg.data, resolve=True)}
    if ss.constraint == "macs":
        result = run_search(search_cfg)
        kind = search_cfg.constraint.kind
        described = (f"{macs_low:.2f}-{macs_high:.2f} MMACs" if kind == "macs"
                     else f"LitePred latency <= {search_cfg.constraint.limit_ms} ms")
        return {**common, "best": result["best"], "generations": result["generations"],
                "evaluated": result["evaluated"], "constraint": described}
    table = ConstantLatency(OmegaConf.to_container(cfg.latency.table, resolve=True))
    latency = ConstantTableLatency(space, table, list(cfg.search.other_latency_ms), space.spec.lut_resolutions, 10,
                                   [resolution])
    low, high = _band(lambda s: latency.latency_ms(s), space, resolution, ss.band)
    calibration, holdout, _ = build_data(search_cfg.data, int(ss.bn_batches))
    supernet = load_supernet(space, qat_checkpoint, 10, [resolution], quantized=True)
    fitness = SupernetFitness(supernet, calibration, holdout, int(ss.bn_batches))
    constraint = BandConstraint(latency, "latency_ms", high, low, unit="ms (constant table)")
    evolution = to_container(search_cfg.evolution)
    resolution_prob = evolution.pop("resolution_prob")
    problem = build_problem(space, fitness, constraint, complexity, resolution_prob, [resolution])
    out.mkdir(parents=True, exist_ok=True)
    state = out / "search_state.json"
    search = (EvolutionSearch.resume(problem, state, EvolutionConfig(**evolution)) if state.is_file()
              else EvolutionSearch(problem, EvolutionConfig(**evolution)))
    best = search.run([], state)
    search.save_log(out / "search.json")
    search.plot(out / "search.png", "latency_ms")
    return {**common, "best": best.to_json(), "generations": search.generation, "evaluated": len(search.records),
            "constraint": f"{low:.3f}-{high:.3f} ms (constant table)", "latency_ms": latency.latency_ms(
                SubnetEncoding.decode(best.to_json()["encoding"]))}


def deploy_subnet(cfg: DictConfig, space: SpaceEncoding, qat_checkpoint: str, search: dict[str, Any],
                  test_loader: Iterable[Any], out: Path) -> dict[str, Any]:
    """The best subnet as the search scored it, exported to INT8 QDQ with its learned grids; the test top-1 of
    the ONNX INT8 model, the fake-quant torch model and the FP32 torch model, and INT8 vs fake-quant agreement."""
    import onnxruntime as ort

    subnet = SubnetEncoding.decode(search["best"]["encoding"])
    bn_batches = int(cfg.subnet_search.bn_batches)
    calibration, holdout, _ = build_data(OmegaConf.create(search["data"]), bn_batches)
    supernet = load_supernet(space, qat_checkpoint, 10, [cfg.resolution], quantized=True)
    search_top1 = SupernetFitness(supernet, calibration, holdout, bn_batches).accuracy(subnet)
    quantized = supernet.get_active_subnet().eval()
    offset_shift = snap_offsets_to_grid_(quantized)
    fp32 = copy.deepcopy(quantized)
    set_quant_mode(fp32, None)
    out.mkdir(parents=True, exist_ok=True)
    export = export_lsq_qdq(quantized, out / "best_int8.onnx",
                            [images for images, _ in calibration][: int(cfg.deploy.calibration_batches)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(export.path), options, providers=["CPUExecutionProvider"])
    correct = {"int8_onnx": 0, "fake_quant": 0, "fp32": 0}
    agree = total = 0
    with torch.no_grad():
        for images, labels in tqdm(test_loader, desc="deploy: test set", leave=False):
            predictions = {"int8_onnx": onnx_logits(session, images).argmax(1),
                           "fake_quant": quantized(images).argmax(1).numpy(), "fp32": fp32(images).argmax(1).numpy()}
            for key, predicted in predictions.items():
                correct[key] += int((predicted == labels.numpy()).sum())
            agree += int((predictions["int8_onnx"] == predictions["fake_quant"]).sum())
            total += len(labels)
    return {"subnet": str(subnet), "mmacs": SubnetComplexity(space, 10, [cfg.resolution])(subnet)[0] / 1e6,
            "search_fitness": search["best"]["fitness"], "search_fitness_rescored": search_top1,
            "offset_snap_steps": offset_shift, "export": export.to_dict(), "test_images": total,
            "test_top1": {k: 100.0 * v / total for k, v in correct.items()},
            "int8_vs_fake_quant_agreement": agree / total}
