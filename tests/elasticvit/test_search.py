"""ElasticViT evolutionary search: mutation/crossover coverage, constraint and elitism invariants, resume, outputs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from moonlit.common.config import compose_config
from moonlit.common.nas import EvolutionConfig, EvolutionSearch
from moonlit.common.nas.pareto import pareto_indices
from moonlit.common.profiling.flops import count_macs
from moonlit.elasticvit.flops import subnet_complexity
from moonlit.elasticvit.latency import SubnetLatency
from moonlit.elasticvit.models import build_model, named_subnet
from moonlit.elasticvit.search import (
    build_constraint,
    build_problem,
    crossover_subnets,
    load_seeds,
    mutate_subnet,
    proxy_fitness,
    run_search,
)
from moonlit.elasticvit.space import ELASTICVIT_SPACE, check_subnet, decode, encode, sample_subnet
from moonlit.litepred.api import PartCache, Predictor

SMOKE = ["fitness=proxy", "evolution.population=24", "evolution.parents=12", "evolution.mutations=8",
         "evolution.crossovers=8", "constraint.min_mmacs=150", "constraint.max_mmacs=250"]


def dimensions(subnet) -> dict[str, int]:
    """Every searchable value of a subnet by name."""
    dims = {"resolution": subnet.resolution, "stem_width": subnet.stem_width, "stem_depth": subnet.stem_depth,
            "stem_kernel": subnet.stem_kernel}
    for stage, stage_space in zip(subnet.stages, ELASTICVIT_SPACE.stages):
        for field in dataclasses.fields(stage):
            dims[f"{stage_space.name}.{field.name}"] = getattr(stage, field.name)
    return dims


def test_mutation_covers_every_dimension_at_its_probability() -> None:
    rng = np.random.default_rng(0)
    parent = named_subnet("S1")
    draws = 3000
    changed = dict.fromkeys(dimensions(parent), 0)
    for _ in range(draws):
        child = mutate_subnet(parent, rng, mutation_prob=0.2, depth_prob=0.4)
        check_subnet(child)
        for name, value in dimensions(child).items():
            changed[name] += value != dimensions(parent)[name]
    assert all(count > 0 for count in changed.values()), changed  # every dimension mutates, resolution included
    sigma = math.sqrt(0.2 * 0.8 / draws)
    for name, count in changed.items():
        if name.endswith("width"):
            continue  # widths: own draws plus lifts forced by the previous stage
        expected = 0.4 if name.endswith("depth") else 0.2  # a mutated value is always another choice
        assert abs(count / draws - expected) < 5 * sigma, (name, count / draws)
    assert mutate_subnet(parent, rng, 0.0, 0.0) == parent


def test_width_mutation_keeps_widths_non_decreasing_and_lifts_later_stages() -> None:
    rng = np.random.default_rng(1)
    parent = decode("r160_s16d1k3_c16d2e3k3_c16d2e3k3_t48d1m2v2_t80d1m2v2_t144d1m2v2_t160d1m2v2")
    lifted = 0
    for _ in range(500):
        child = mutate_subnet(parent, rng, 0.5)
        check_subnet(child)
        lifted += child.conv_stages[0].width > 16 and child.conv_stages[1].width == child.conv_stages[0].width
    assert lifted > 0  # C1 widened above C2: C2 was raised to C1's width, the smallest allowed


def test_crossover_children_take_each_stage_from_a_parent() -> None:
    rng = np.random.default_rng(2)
    mixed = 0
    for _ in range(300):
        a, b = sample_subnet(ELASTICVIT_SPACE, rng), sample_subnet(ELASTICVIT_SPACE, rng)
        child = crossover_subnets(a, b, rng)
        check_subnet(child)  # widths never decrease
        assert child.resolution in (a.resolution, b.resolution)
        stem = (child.stem_width, child.stem_depth, child.stem_kernel)
        assert stem in ((a.stem_width, a.stem_depth, a.stem_kernel), (b.stem_width, b.stem_depth, b.stem_kernel))
        sources = []
        for i, stage in enumerate(child.stages):
            assert stage in (a.stages[i], b.stages[i])
            sources.append(stage == a.stages[i])
        mixed += 0 < sum(sources) < len(sources)
    assert mixed > 200  # both parents contribute stages in most children


def test_proxy_fitness_matches_torch_counts() -> None:
    subnet = named_subnet("T1")
    model = build_model(subnet).eval()
    macs = count_macs(model, torch.zeros(1, 3, subnet.resolution, subnet.resolution)).macs
    params = sum(p.numel() for p in model.parameters())
    assert proxy_fitness([subnet]) == [pytest.approx(math.log10(macs) + math.log10(params))]


def test_macs_search_invariants_and_outputs(tmp_path: Path) -> None:
    cfg = compose_config("elasticvit", "search", [*SMOKE, "evolution.iterations=4", f"output_dir={tmp_path}"])
    result = run_search(cfg)
    state = json.loads((tmp_path / "search_state.json").read_text())
    records = state["records"]
    assert result["generations"] == 4 and len(records) == result["evaluated"] > 24
    for record in records:  # every evaluated candidate satisfies the limit, by an independent count
        mmacs = subnet_complexity(decode(record["encoding"])).macs / 1e6
        assert 150 <= mmacs <= 250 and record["objectives"]["mmacs"] == pytest.approx(mmacs)
    best = [entry["best"] for entry in state["log"]]
    assert best == sorted(best)  # elitism: the best never decreases
    assert {"mutation", "crossover", "sample"} <= {r["origin"] for r in records}
    assert len({decode(r["encoding"]).resolution for r in records}) > 1
    # pareto.json: exactly the non-dominated records in (MMACs down, fitness up), by brute force
    front = json.loads((tmp_path / "pareto.json").read_text())["front"]
    costs = np.array([[r["objectives"]["mmacs"], -r["fitness"]] for r in records])
    dominated = [any(np.all(o <= c) and np.any(o < c) for o in costs) for c in costs]
    expected = {r["encoding"] for r, d in zip(records, dominated) if not d}
    assert {r["encoding"] for r in front} == expected
    assert set(pareto_indices(costs).tolist()) == {i for i, d in enumerate(dominated) if not d}
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["best"]["encoding"] == result["best"]["encoding"]
    assert summary["best"]["fitness"] == max(r["fitness"] for r in records)
    top = json.loads((tmp_path / "best_subnets.json").read_text())
    assert [t["fitness"] for t in top] == sorted((r["fitness"] for r in records), reverse=True)[:len(top)]
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resolution_mutates_inside_a_search() -> None:
    # a wide band: a resolution step alone changes MACs by up to (160/128)^2, out of a narrow band
    wide = compose_config("elasticvit", "search", [*SMOKE, "constraint.min_mmacs=50", "constraint.max_mmacs=800"])
    problem = build_problem(proxy_fitness, build_constraint(wide.constraint))
    parent_resolution: dict[str, int] = {}
    mutate = problem.mutate

    def recording_mutate(subnet, rng, prob):
        child = mutate(subnet, rng, prob)
        parent_resolution.setdefault(encode(child), subnet.resolution)
        return child

    problem.mutate = recording_mutate
    search = EvolutionSearch(problem, EvolutionConfig(population=16, parents=8, mutations=16, crossovers=0,
                                                      iterations=3, mutation_prob=0.2))
    search.run()
    moved = [r for r in search.records.values()
             if r.origin == "mutation" and r.candidate.resolution != parent_resolution[r.encoding]]
    assert moved  # evaluated children whose resolution differs from their parent's
    proposed = [encoding for encoding in parent_resolution
                if decode(encoding).resolution != parent_resolution[encoding]]
    assert 0.1 < len(proposed) / len(parent_resolution) < 0.3  # ~ mutation_prob of all proposals


def test_resume_continues_exactly(tmp_path: Path) -> None:
    straight = run_search(compose_config("elasticvit", "search",
                                         [*SMOKE, "evolution.iterations=3", f"output_dir={tmp_path / 'a'}"]))
    run_search(compose_config("elasticvit", "search", [*SMOKE, "evolution.iterations=1",
                                                       f"output_dir={tmp_path / 'b'}"]))
    resumed = run_search(compose_config("elasticvit", "search",
                                        [*SMOKE, "evolution.iterations=3", f"output_dir={tmp_path / 'b'}"]))
    assert resumed["best"] == straight["best"] and resumed["evaluated"] == straight["evaluated"]
    a, b = (json.loads((tmp_path / d / "search_state.json").read_text()) for d in "ab")
    assert a["records"] == b["records"] and a["log"] == b["log"]


def test_seeds_join_the_initial_population(tmp_path: Path) -> None:
    seed = named_subnet("S1")  # 217.6 MMACs (reference counter); inside [150, 250] exact MACs
    (tmp_path / "seeds.json").write_text(json.dumps([{"encoding": encode(seed)}]))
    seeds = load_seeds([encode(named_subnet("T2")), encode(seed)], [tmp_path / "seeds.json"],
                       source=lambda: [named_subnet("S2")])
    assert [encode(s) for s in seeds] == [encode(named_subnet(n)) for n in ("T2", "S1", "S2")]
    cfg = compose_config("elasticvit", "search", [*SMOKE, "evolution.iterations=0", f"output_dir={tmp_path / 'run'}",
                                                  f"seeds.files=[{tmp_path / 'seeds.json'}]"])
    run_search(cfg)
    records = json.loads((tmp_path / "run" / "search_state.json").read_text())["records"]
    assert records[0]["encoding"] == encode(seed) and records[0]["origin"] == "seed"


SMALL_SPACE = dataclasses.replace(
    ELASTICVIT_SPACE, resolutions=(128, 160), first_conv_widths=(16,), stem_depths=(1,), stem_kernels=(3,),
    conv_stages=tuple(dataclasses.replace(s, widths=s.widths[:2], depths=(1, 2)) for s in ELASTICVIT_SPACE.conv_stages),
    transformer_stages=tuple(dataclasses.replace(s, widths=s.widths[:2], depths=(1, 2))
                             for s in ELASTICVIT_SPACE.transformer_stages),
    conv_expands=(3, 4), conv_kernels=(3,), mlp_ratios=(2, 3), v_scales=(2,))


@pytest.fixture(scope="module")
def small_predictor(tmp_path_factory: pytest.TempPathFactory, make_stand_in_predictor) -> tuple[Predictor, Path]:
    """A stand-in predictor (linear kernel latencies), saved; the block cache file is filled by the tests."""
    root = tmp_path_factory.mktemp("latency")
    predictor = make_stand_in_predictor(root, seed=3, ms_per_unit=1e-7)
    return predictor, root


def test_latency_constrained_search_keeps_every_candidate_in_the_band(small_predictor) -> None:
    predictor, root = small_predictor
    latency = SubnetLatency(predictor, PartCache("ort-fp32", root / "parts.jsonl"), space=SMALL_SPACE)
    rng = np.random.default_rng(4)
    sampled = latency.predict([sample_subnet(SMALL_SPACE, rng) for _ in range(40)])
    limit = float(np.quantile(sampled, 0.6))
    delta = float(np.quantile(sampled, 0.6) - np.quantile(sampled, 0.1))
    problem = build_problem(lambda batch: proxy_fitness(batch, space=SMALL_SPACE), latency.constraint(limit, delta),
                            space=SMALL_SPACE)
    search = EvolutionSearch(problem, EvolutionConfig(population=12, parents=6, mutations=6, crossovers=6,
                                                      iterations=3, mutation_prob=0.3))
    search.run()
    records = list(search.records.values())
    fresh = SubnetLatency(predictor, PartCache("ort-fp32"), space=SMALL_SPACE)  # re-detected from scratch
    recomputed = fresh.predict([r.candidate for r in records])
    stored = np.array([r.objectives["latency_ms"] for r in records])
    np.testing.assert_allclose(stored, recomputed, rtol=1e-12)
    assert np.all((stored <= limit) & (stored >= limit - delta))
    assert search.summary()["objectives"] == ["latency_ms", "mmacs", "params_m"]


def test_latency_constraint_from_config(small_predictor) -> None:
    predictor, root = small_predictor
    cfg = compose_config("elasticvit", "search", ["constraint.kind=latency",
                                                  f"constraint.predictor_dir={root / 'predictor'}",
                                                  f"constraint.kernel_cache={root / 'parts.jsonl'}",
                                                  "constraint.limit_ms=1000"]).constraint
    constraint = build_constraint(cfg, space=SMALL_SPACE)
    subnet = sample_subnet(SMALL_SPACE, np.random.default_rng(5))
    check = constraint.check([subnet])
    assert check.feasible.tolist() == [True]
    expected = SubnetLatency(predictor, space=SMALL_SPACE).predict([subnet])
    np.testing.assert_allclose(check.values["latency_ms"], expected, rtol=1e-9)
    with pytest.raises(ValueError, match="needs constraint.predictor_dir"):
        build_constraint(compose_config("elasticvit", "search", ["constraint.kind=latency"]).constraint)
    with pytest.raises(ValueError, match="expected 'macs' or 'latency'"):
        build_constraint(compose_config("elasticvit", "search", ["constraint.kind=params"]).constraint)


def test_latency_constraint_under_a_macs_budget(small_predictor) -> None:
    _, root = small_predictor
    rng = np.random.default_rng(6)
    subnets = [sample_subnet(SMALL_SPACE, rng) for _ in range(12)]
    mmacs = np.array([subnet_complexity(s, 1000, SMALL_SPACE).macs / 1e6 for s in subnets])
    budget = float(np.median(mmacs))
    cfg = compose_config("elasticvit", "search", ["constraint.kind=latency",
                                                  f"constraint.predictor_dir={root / 'predictor'}",
                                                  f"constraint.kernel_cache={root / 'parts.jsonl'}",
                                                  "constraint.limit_ms=1000",
                                                  f"constraint.macs_budget={budget}"]).constraint
    check = build_constraint(cfg, space=SMALL_SPACE).check(subnets)
    assert check.feasible.tolist() == (mmacs <= budget).tolist()  # the latency limit is loose: MACs decide
    assert np.all(np.isfinite(check.values["latency_ms"][check.feasible]))


def test_latency_detects_kernels_under_the_predictors_rules() -> None:
    from moonlit.litepred.testing import stand_in_predictor

    recorded = stand_in_predictor(["conv"], platform={"name": "debug", "rules": "ort-int8"})
    assert SubnetLatency(recorded, space=SMALL_SPACE).cache.platform == "ort-int8"  # the rules, not the name
    named = stand_in_predictor(["conv"], platform={"name": "ort-fp32"})
    assert SubnetLatency(named, space=SMALL_SPACE).cache.platform == "ort-fp32"
