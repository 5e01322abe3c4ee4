"""SpaceEvo subnet search: mutation/crossover coverage, latency band and elitism invariants, resume, outputs,
and the INT8 supernet fitness on generated images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from moonlit.common.config import compose_config
from moonlit.common.nas import EvolutionConfig, EvolutionSearch
from moonlit.common.profiling.flops import count_macs
from moonlit.common.train.bn_recalibration import recalibrate_batch_norm
from moonlit.litepred.api import PartCache, Predictor, load_predictor
from moonlit.litepred.testing import stand_in_predictor
from moonlit.spaceevo.latency import SubnetLatency, check_choices, subnet_parts
from moonlit.spaceevo.ops.lsq_plus import ActivationQuantizer, WeightQuantizer
from moonlit.spaceevo.space import (
    SpaceEncoding,
    SubnetEncoding,
    check_subnet,
    stage_options,
)
from moonlit.spaceevo.subnet_search import (
    SubnetComplexity,
    SupernetFitness,
    build_constraint,
    build_data,
    build_problem,
    crossover_subnets,
    load_supernet,
    mutate_subnet,
    run_search,
    sample_subnet,
)
from moonlit.spaceevo.supernet import Supernet

VNNI = SpaceEncoding.decode("onnxw-151122-023231")
TINY = [32, 40]  # supernet resolutions of the fast tests
SMOKE = ["fitness=proxy", "resolutions=[32,40]", "evolution.population=8", "evolution.parents=4",
         "evolution.mutations=4", "evolution.crossovers=4", "constraint.kind=macs", "constraint.min_mmacs=40",
         "constraint.max_mmacs=80"]


def dimensions(subnet: SubnetEncoding) -> dict[str, object]:
    """Every searchable value by name: resolution, per stage depth, per block kernel/width/expand."""
    dims: dict[str, object] = {"resolution": subnet.resolution}
    for stage, blocks in zip(stage_options(VNNI), subnet.stages()):
        dims[f"{stage.name}.depth"] = len(blocks)
        for position, (kernel, width, expand) in enumerate(blocks):
            dims.update({f"{stage.name}.{position}.kernel": kernel, f"{stage.name}.{position}.width": width,
                         f"{stage.name}.{position}.expand": expand})
    return dims


def choice_counts() -> dict[str, int]:
    counts = {"resolution": len(VNNI.spec.resolutions)}
    for stage in stage_options(VNNI):
        counts[f"{stage.name}.depth"] = len(stage.depths)
        for position in range(max(stage.depths)):
            counts.update({f"{stage.name}.{position}.kernel": len(stage.kernels),
                           f"{stage.name}.{position}.width": len(stage.widths),
                           f"{stage.name}.{position}.expand": max(1, len(stage.expands))})
    return counts


def test_mutation_covers_every_dimension_at_its_probability() -> None:
    rng = np.random.default_rng(0)
    parent = sample_subnet(VNNI, np.random.default_rng(11))
    before = dimensions(parent)
    draws = 2000
    changed = dict.fromkeys(before, 0)
    grown = 0
    for _ in range(draws):
        child = mutate_subnet(parent, VNNI, rng, mutation_prob=0.3, resolution_prob=0.5)
        check_subnet(child, VNNI)  # every value inside the space (each stage's width window)
        after = dimensions(child)
        for name in before:
            if name in after:
                changed[name] += after[name] != before[name]
        grown += sum(child.depths) > sum(parent.depths)
    counts = choice_counts()
    movable = {name for name in before if counts[name] > 1}
    assert all(changed[name] > 0 for name in movable), {n: changed[n] for n in movable if not changed[n]}
    assert all(changed[name] == 0 for name in before if name not in movable)  # single-choice values never move
    min_depth = {stage.name: min(stage.depths) for stage in stage_options(VNNI)}
    for name in movable:
        stage, _, rest = name.partition(".")
        if rest != "depth" and name != "resolution" and int(rest.split(".")[0]) >= min_depth[stage]:
            continue  # this block position may be dropped by a depth mutation: its rate is diluted
        expected = 0.5 if name == "resolution" else 0.3  # a mutated value is always another choice
        sigma = math.sqrt(expected * (1 - expected) / draws)
        assert abs(changed[name] / draws - expected) < 5 * sigma, (name, changed[name] / draws)
    assert grown > 0  # deeper stages get new (random, valid) blocks
    assert mutate_subnet(parent, VNNI, rng, 0.0, 0.0) == parent


def test_crossover_children_inherit_per_stage_and_per_block() -> None:
    rng = np.random.default_rng(2)
    mixed = 0
    for _ in range(300):
        a, b = sample_subnet(VNNI, rng), sample_subnet(VNNI, rng)
        child = crossover_subnets(a, b, rng)
        check_subnet(child, VNNI)
        assert child.resolution in (a.resolution, b.resolution)
        from_a = from_b = 0
        for blocks, blocks_a, blocks_b in zip(child.stages(), a.stages(), b.stages()):
            assert len(blocks) in (len(blocks_a), len(blocks_b))
            for position, block in enumerate(blocks):
                options = [p[position] for p in (blocks_a, blocks_b) if position < len(p)]
                for field in range(3):  # kernel, width, expand: each from a parent at this position
                    assert block[field] in [o[field] for o in options]
                from_a += position < len(blocks_a) and block == blocks_a[position]
                from_b += position < len(blocks_b) and block == blocks_b[position]
        mixed += from_a > 0 and from_b > 0
    assert mixed > 250  # both parents contribute in nearly every child


def test_complexity_matches_whole_model_count() -> None:
    complexity = SubnetComplexity(VNNI)
    rng = np.random.default_rng(4)
    for subnet in [sample_subnet(VNNI, rng) for _ in range(2)]:
        supernet = Supernet(VNNI, resolutions=[subnet.resolution])
        supernet.set_active(subnet)
        report = count_macs(supernet.get_active_subnet(), torch.zeros(1, 3, subnet.resolution, subnet.resolution))
        assert complexity(subnet) == (report.macs, report.params)
        expected = math.log10(report.macs) + math.log10(report.params)
        assert complexity.proxy_fitness([subnet]) == [pytest.approx(expected)]


@pytest.fixture(scope="module")
def small_predictor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Predictor, Path, list[SubnetEncoding]]:
    """A stand-in ort-int8 predictor (linear kernel latencies), saved; six tiny subnets' blocks in the cache file."""
    root = tmp_path_factory.mktemp("latency")
    cache = PartCache("ort-int8", root / "parts.jsonl")
    rng = np.random.default_rng(3)
    subnets = [sample_subnet(VNNI, rng, TINY) for _ in range(6)]
    for subnet in subnets:
        cache.rows(subnet_parts(VNNI, subnet, resolutions=TINY))
    predictor = stand_in_predictor(seed=3, platform={"name": "ort-int8", "rules": "ort-int8"})
    predictor.save(root / "predictor")
    return predictor, root, subnets


def test_latency_constrained_search_keeps_every_candidate_in_the_band(small_predictor) -> None:
    predictor, root, subnets = small_predictor
    cache_file = root / "parts.jsonl"
    latency = SubnetLatency(predictor, VNNI, PartCache("ort-int8", cache_file), resolutions=TINY)
    seeded = latency.predict(subnets)  # the seeds' blocks are cached: few new exports in the search
    limit = float(np.quantile(seeded, 0.8))
    delta = limit - float(np.quantile(seeded, 0.2))
    complexity = SubnetComplexity(VNNI, resolutions=TINY)
    problem = build_problem(VNNI, complexity.proxy_fitness, latency.constraint(limit, delta), complexity,
                            resolutions=TINY)
    search = EvolutionSearch(problem, EvolutionConfig(population=4, parents=3, mutations=3, crossovers=3,
                                                      iterations=2, mutation_prob=0.3))
    search.run(subnets)
    records = list(search.records.values())
    assert {"seed", "mutation", "crossover"} <= {r.origin for r in records}
    assert sum(entry.rejected for entry in search.log) > 0  # the band binds: some proposals fell outside
    # re-predicted outside the search: a second latency model on the cached block kernels, one predictor call
    fresh = SubnetLatency(load_predictor(root / "predictor"), VNNI, PartCache("ort-int8", cache_file),
                          resolutions=TINY)
    recomputed = fresh.predict([SubnetEncoding.decode(r.encoding) for r in records])
    stored = np.array([r.objectives["latency_ms"] for r in records])
    np.testing.assert_allclose(stored, recomputed, rtol=1e-9)
    assert np.all((recomputed <= limit) & (recomputed >= limit - delta))
    best = [entry.best for entry in search.log]
    assert best == sorted(best)  # elitism
    assert search.summary()["objectives"] == ["latency_ms", "mmacs", "params_m"]


def test_latency_constraint_from_config(small_predictor) -> None:
    predictor, root, _ = small_predictor
    cfg = compose_config("spaceevo", "subnet_search", [f"constraint.predictor_dir={root / 'predictor'}",
                                                       f"constraint.kernel_cache={root / 'parts.jsonl'}",
                                                       "constraint.limit_ms=1000", "constraint.delta_ms=999.99"])
    assert cfg.constraint.platform == "ort-int8"
    complexity = SubnetComplexity(VNNI, resolutions=TINY)
    constraint = build_constraint(cfg.constraint, VNNI, complexity, resolutions=TINY)
    subnet = sample_subnet(VNNI, np.random.default_rng(6), TINY)
    check = constraint.check([subnet])
    expected = SubnetLatency(predictor, VNNI, resolutions=TINY).predict([subnet])  # re-detected from scratch
    np.testing.assert_allclose(check.values["latency_ms"], expected, rtol=1e-9)
    assert check.feasible.tolist() == [bool(0.01 <= expected[0] <= 1000)]
    with pytest.raises(ValueError, match="holds no LitePred predictor"):
        build_constraint(compose_config("spaceevo", "subnet_search", [
            f"constraint.predictor_dir={root / 'missing'}"]).constraint, VNNI, complexity)
    with pytest.raises(ValueError, match="expected 'latency' or 'macs'"):
        build_constraint(compose_config("spaceevo", "subnet_search", ["constraint.kind=params"]).constraint, VNNI,
                         complexity)


def test_macs_search_invariants_and_outputs(tmp_path: Path) -> None:
    result = run_search(compose_config("spaceevo", "subnet_search",
                                       [*SMOKE, "evolution.iterations=3", f"output_dir={tmp_path}"]))
    state = json.loads((tmp_path / "search_state.json").read_text())
    records = state["records"]
    assert result["generations"] == 3 and len(records) == result["evaluated"] > 8
    complexity = SubnetComplexity(VNNI, resolutions=TINY)
    for record in records:
        subnet = SubnetEncoding.decode(record["encoding"])
        check_choices(VNNI, subnet, TINY)
        mmacs = complexity(subnet)[0] / 1e6
        assert 40 <= mmacs <= 80 and record["objectives"]["mmacs"] == pytest.approx(mmacs)
    best = [entry["best"] for entry in state["log"]]
    assert best == sorted(best)
    assert {"mutation", "crossover", "sample"} <= {r["origin"] for r in records}
    front = json.loads((tmp_path / "pareto.json").read_text())
    costs = np.array([[r["objectives"]["mmacs"], -r["fitness"]] for r in records])
    dominated = [any(np.all(o <= c) and np.any(o < c) for o in costs) for c in costs]
    assert {r["encoding"] for r in front["front"]} == {r["encoding"] for r, d in zip(records, dominated) if not d}
    assert front["space"] == str(VNNI) and front["objective"] == "mmacs"
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["best"]["fitness"] == max(r["fitness"] for r in records) == result["best"]["fitness"]
    top = json.loads((tmp_path / "best_subnets.json").read_text())
    assert [t["fitness"] for t in top] == sorted((r["fitness"] for r in records), reverse=True)[:len(top)]
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_exactly(tmp_path: Path) -> None:
    def run(directory: str, iterations: int) -> dict:
        return run_search(compose_config("spaceevo", "subnet_search", [
            *SMOKE, f"evolution.iterations={iterations}", f"output_dir={tmp_path / directory}"]))

    straight = run("a", 2)
    run("b", 1)
    resumed = run("b", 2)
    assert resumed["best"] == straight["best"] and resumed["evaluated"] == straight["evaluated"]
    a, b = (json.loads((tmp_path / d / "search_state.json").read_text()) for d in "ab")
    assert a["records"] == b["records"] and a["log"] == b["log"]


def test_supernet_fitness_smoke_on_generated_images(tmp_path: Path) -> None:
    overrides = [
        "space=onnxw-000000-000000", "resolutions=[32,40]", "data=generated", f"data.root={tmp_path / 'images'}",
        "data.generate={num_classes:4,train_per_class:6,val_per_class:1,image_size:40,seed:0}", "data.img_size=32",
        "data.holdout_per_class=2", "data.batch_size=4", "data.num_workers=0", "data.cache=true", "bn_batches=2",
        "evolution.population=4", "evolution.parents=2", "evolution.mutations=2", "evolution.crossovers=2",
        "evolution.iterations=1", "constraint.kind=macs", "constraint.max_mmacs=1000", f"output_dir={tmp_path / 'run'}"]
    cfg = compose_config("spaceevo", "subnet_search", overrides)
    result = run_search(cfg)
    records = json.loads((tmp_path / "run" / "search_state.json").read_text())["records"]
    assert result["evaluated"] == len(records) >= 6
    holdout_images = 4 * 2
    for record in records:  # top-1 (%) over the 8 held-out images
        assert 0 <= record["fitness"] <= 100
        correct = record["fitness"] * holdout_images / 100
        assert correct == pytest.approx(round(correct))

    # the fitness equals an independent measurement: the extracted static subnet, its BN re-estimated
    calibration, holdout, classes = build_data(cfg.data, cfg.bn_batches)
    supernet = load_supernet(cfg.space, None, classes, [32, 40], quantized=True)
    fitness = SupernetFitness(supernet, calibration, holdout, calibration_batches=2)
    quantizers = [m for m in supernet.modules() if isinstance(m, (ActivationQuantizer, WeightQuantizer))]
    assert quantizers and all(q.bits == 8 and bool(q.initialized) for q in quantizers)
    subnet = SubnetEncoding.decode(records[-1]["encoding"])
    score = fitness([subnet, subnet])
    assert score[0] == score[1]  # the same images for every candidate
    supernet.set_active(subnet)
    static = supernet.get_active_subnet()
    recalibrate_batch_norm(static, calibration, 2)
    with torch.no_grad():
        correct = sum(int((static.eval()(x).argmax(1) == y).sum()) for x, y in holdout)
    assert score[0] == pytest.approx(100.0 * correct / holdout_images)
