"""OpenVINO's kernels read off its executed graph, and checked against the fusion rules (LitePred §3).

LitePred's kernels must be what the engine runs as one. For OpenVINO this is observable: the CPU
plugin's runtime model (``compiled.get_runtime_model()``, read by
:func:`moonlit.common.profiling.openvino.executed_layers`) lists one node per executed primitive with
the names of the source ops fused into it, and the per-layer counters
(:func:`~moonlit.common.profiling.openvino.per_layer_counters`) say which of them ran.
:func:`moonlit.litepred.kernels.ov_executed.executed_partition` turns that into groups of the ONNX
graph's nodes (how: see that module).

Only *compute* nodes are compared: QuantizeLinear/DequantizeLinear (the INT8 rules look through
them), views and shape arithmetic (free under the rules; the plugin runs them in place) and
constant subgraphs are left out. Executed layers with no compute node (inserted Reorders, the
model-input quantization, ops the plugin renamed beyond recognition) are listed as
``engine_only``. :func:`compare` puts the rule-based partition
(:func:`moonlit.litepred.kernels.detect.detect_kernels`) beside it; each connected set of
disagreeing groups is one mismatch.

Command line (prints executed kernels, the rules' kernels and the mismatches)::

    python -m moonlit.litepred.kernels.ov_fusion model=<file.onnx | family/description@res | timm-mobile> \
        platform=ov-fp32
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from moonlit.common.config import hydra_app
from moonlit.common.errors import InputError
from moonlit.litepred.graph.ir import Graph
from moonlit.litepred.graph.onnx_import import load_graph
from moonlit.litepred.kernels.detect import detect_kernels
from moonlit.litepred.kernels.ov_executed import (
    OV_PLATFORMS,
    EngineKernel,
    EnginePartition,
    executed_partition,
    platform_precision,
)

__all__ = ["OV_PLATFORMS", "EngineKernel", "EnginePartition", "Mismatch", "FusionReport", "platform_precision",
           "executed_partition", "compare", "compare_model", "run", "main"]


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """A connected set of engine groups and rule kernels whose node sets differ."""

    engine: tuple[tuple[str, ...], ...]
    engine_layers: tuple[str, ...]
    rules: tuple[tuple[str, tuple[str, ...]], ...]  # (kernel type or "unassigned", nodes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FusionReport:
    """Executed kernels vs the rules' kernels of one model on one platform."""

    platform: str
    model: str
    engine: EnginePartition
    rule_kernels: list[tuple[str, tuple[str, ...]]]
    mismatches: list[Mismatch]

    def mismatched_nodes(self) -> int:
        """Compute nodes in a mismatch (one mismatch can span many nodes)."""
        return len({n for m in self.mismatches for group in m.engine for n in group}
                   | {n for m in self.mismatches for _, nodes in m.rules for n in nodes})

    def to_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "model": self.model,
                "engine": [k.to_dict() for k in self.engine.kernels], "engine_only": self.engine.engine_only,
                "rules": [{"type": t, "nodes": list(n)} for t, n in self.rule_kernels],
                "mismatches": [m.to_dict() for m in self.mismatches]}


# ---- rules vs engine -----------------------------------------------------------------------
def _rule_partition(graph: Graph, platform: str, compute: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    compute_set = set(compute)
    detection = detect_kernels(graph, platform)
    kernels = [(k.config.type, tuple(n for n in k.nodes if n in compute_set)) for k in detection.kernels]
    kernels += [("unassigned", (u.node,)) for u in detection.unassigned if u.node in compute_set]
    return [(kind, nodes) for kind, nodes in kernels if nodes]


def _mismatches(engine: Sequence[EngineKernel], rules: Sequence[tuple[str, tuple[str, ...]]]) -> list[Mismatch]:
    """Connected components of the overlap graph between engine groups and rule kernels that are not 1:1 equal."""
    engine_sets = [frozenset(k.nodes) for k in engine]
    rule_sets = [frozenset(nodes) for _, nodes in rules]
    by_node_rule = {n: i for i, nodes in enumerate(rule_sets) for n in nodes}
    by_node_engine = {n: i for i, nodes in enumerate(engine_sets) for n in nodes}
    seen_engine: set[int] = set()
    seen_rules: set[int] = set()
    found = []
    for start in range(len(engine_sets)):
        if start in seen_engine:
            continue
        component_engine, component_rules, stack = {start}, set(), [start]
        while stack:
            index = stack.pop()
            for node in engine_sets[index]:
                rule = by_node_rule.get(node)
                if rule is None or rule in component_rules:
                    continue
                component_rules.add(rule)
                for other in rule_sets[rule]:
                    e = by_node_engine.get(other)
                    if e is not None and e not in component_engine:
                        component_engine.add(e)
                        stack.append(e)
        seen_engine |= component_engine
        seen_rules |= component_rules
        if len(component_engine) == 1 and len(component_rules) == 1 and \
                engine_sets[start] == rule_sets[next(iter(component_rules))]:
            continue
        found.append(Mismatch(
            engine=tuple(engine[i].nodes for i in sorted(component_engine)),
            engine_layers=tuple(layer for i in sorted(component_engine) for layer in engine[i].layers),
            rules=tuple(rules[i] for i in sorted(component_rules))))
    # Rule kernels over nodes the engine runs in place or shows nowhere.
    found += [Mismatch((), (), (rules[i],)) for i in range(len(rules)) if i not in seen_rules]
    return found


def compare(path: str | Path, platform: str) -> FusionReport:
    """Executed kernels of ``path`` (the file the platform times) vs ``platform``'s rule-based kernels."""
    graph = load_graph(path)
    engine = executed_partition(path, platform, graph=graph)
    rules = _rule_partition(graph, platform, engine.compute_nodes)
    return FusionReport(platform, str(path), engine, rules, _mismatches(engine.kernels, rules))


def compare_model(model: Any, platform: str, workdir: str | Path, example_inputs: Any = None) -> FusionReport:
    """:func:`compare` for an FP32 ``.onnx`` file or a torch module (exported with ``example_inputs``), quantized
    for ``ov-int8`` exactly as the platform's backend does."""
    from moonlit.litepred.profile.openvino import OpenVinoBackend
    from moonlit.litepred.profile.ort import resolve_onnx_inputs

    backend = OpenVinoBackend(platform, precision=platform_precision(platform))
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise InputError(f"model file {path} does not exist; expected an .onnx file")
        timed = backend.prepare_onnx(path, resolve_onnx_inputs(path), workdir)
    else:
        timed, _ = backend.export(model, example_inputs, workdir)
    return compare(timed, platform)


# ---- command line --------------------------------------------------------------------------
def _format(report: FusionReport) -> str:
    lines = [f"# {report.model} on {report.platform}",
             f"executed kernels ({len(report.engine.kernels)}):"]
    for kernel in report.engine.kernels:
        kinds = ",".join(f"{t}:{p}:{r}" for t, p, r in zip(kernel.layer_types, kernel.primitives, kernel.precisions))
        lines.append(f"  [{kinds or 'not shown by the engine'}] {', '.join(kernel.nodes)}")
    lines.append(f"engine-only layers ({len(report.engine.engine_only)}): "
                 + ", ".join(f"{name} ({kind})" for name, kind in report.engine.engine_only))
    lines.append(f"rule kernels ({len(report.rule_kernels)}):")
    lines += [f"  {kind}: {', '.join(nodes)}" for kind, nodes in report.rule_kernels]
    lines.append(f"mismatches ({len(report.mismatches)}, over {report.mismatched_nodes()} of "
                 f"{len(report.engine.compute_nodes)} compute nodes):")
    for mismatch in report.mismatches:
        lines.append("  engine " + " | ".join(", ".join(g) for g in mismatch.engine)
                     + "  <->  rules " + " | ".join(f"{k}: {', '.join(n)}" for k, n in mismatch.rules))
    return "\n".join(lines)


def _run_one(spec_name: str, platform: str) -> str:
    """One spec's mismatch line from a child process: the OpenVINO CPU plugin can crash (a segfault compiling
    some QDQ graphs) and must not take the whole run with it."""
    child = subprocess.run([sys.executable, "-m", "moonlit.litepred.kernels.ov_fusion", f"model={spec_name}",
                            f"platform={platform}"], capture_output=True, text=True, check=False)
    counts = re.findall(r"^executed kernels \((\d+)\)|^rule kernels \((\d+)\)|^mismatches \((\d+), over (\d+) of "
                        r"(\d+) compute nodes\)", child.stdout, flags=re.MULTILINE)
    if child.returncode != 0 or len(counts) != 3:
        reason = f"signal {-child.returncode}" if child.returncode < 0 else (child.stderr.strip().splitlines()
                                                                              or ["no output"])[-1]
        return f"{spec_name}: the engine failed ({reason})"
    executed, rules = int(counts[0][0]), int(counts[1][1])
    mismatches, nodes, compute = (int(value) for value in counts[2][2:])
    return (f"{spec_name}: {executed} executed kernels, {rules} rule kernels, {mismatches} mismatches "
            f"over {nodes} of {compute} compute nodes")


def run(cfg: DictConfig) -> str:
    """Executed kernels vs rule kernels and the mismatches of ``cfg.model`` on ``cfg.platform`` (the text printed),
    or one line per timm-mobile spec when ``cfg.model`` is ``timm-mobile``."""
    from moonlit.litepred.apps.settings import resolve_spec
    from moonlit.litepred.pipeline import export_spec
    from moonlit.litepred.zoo import get_family

    model, platform = cfg.model, str(cfg.platform)
    if not model:
        raise InputError("model=<file.onnx | family/description@res | timm-mobile> is required")
    model = str(model)
    platform_precision(platform)
    if model == "timm-mobile":
        total, nodes, compute, failed = 0, 0, 0, 0
        specs = get_family("timm-mobile").fixed_specs() or []
        lines = []
        for spec in specs:
            line = _run_one(f"timm-mobile/{spec.description}@{spec.resolution}", platform)
            print(line, flush=True)
            lines.append(line)
            found = re.search(r"(\d+) mismatches over (\d+) of (\d+) compute nodes$", line)
            if found:
                total, nodes, compute = (a + int(b) for a, b in zip((total, nodes, compute), found.groups()))
            failed += found is None
        lines.append(f"total mismatches on {len(specs) - failed} of {len(specs)} timm-mobile specs ({platform}): "
                     f"{total} over {nodes} of {compute} compute nodes"
                     + (f"; the engine failed on {failed}" if failed else ""))
        print(lines[-1])
        return "\n".join(lines)
    with tempfile.TemporaryDirectory(prefix="litepred-ov-fusion-") as workdir:
        if model.endswith(".onnx"):
            report = compare_model(model, platform, workdir)
        else:
            report = compare_model(export_spec(resolve_spec(model), Path(workdir) / "model.onnx"), platform, workdir)
    text = _format(report)
    print(text)
    return text


@hydra_app("litepred", "ov_fusion")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
