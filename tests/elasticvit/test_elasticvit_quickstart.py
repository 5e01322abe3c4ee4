"""Quickstart section "ElasticViT" (moonlit.elasticvit.quickstart) on a short run of two samplers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from moonlit.common.config import compose_config
from moonlit.elasticvit.flops import subnet_complexity
from moonlit.elasticvit.quickstart import run_quickstart
from moonlit.elasticvit.space import decode
from moonlit.elasticvit.train_step import space_from_config


def test_quickstart_writes_the_section(tmp_path: Path) -> None:
    cfg = compose_config("elasticvit", "quickstart", [
        f"paths.output_root={tmp_path}", "samplers=[adjacent_step,uniform]", "steps=8", "data.num_classes=4",
        "data.train_per_class=8", "data.val_per_class=2", "search.enabled=false"])
    results = run_quickstart(cfg)
    out = Path(cfg.output_dir)
    section = json.loads((out / "section.json").read_text())
    assert section["name"] == "elasticvit" and (out / section["figures"][0]["path"]).is_file()
    table = section["tables"][0]
    assert [row[0] for row in table["rows"]] == ["adjacent_step", "uniform"]
    assert json.loads((out / "results.json").read_text()) == results

    space = space_from_config(OmegaConf.to_container(compose_config("elasticvit", "train", ["experiment=smoke"]).space))
    levels = (0.6, 1.0, 1.4, 1.8)
    for result in results.values():
        assert result["steps"] == 8 and len(result["mmacs"]) == 8
        # every evaluated subnet sits in its level's band by the scalar MAC counter (4 classes)
        for level, encoding in result["representatives"].items():
            mmacs = subnet_complexity(decode(encoding, space), 4, space).macs / 1e6
            assert float(level) <= mmacs <= float(level) + 0.2
            assert 0.0 <= result["eval"][f"top1/{level}"] <= 1.0
        gap = np.mean(np.abs(np.diff(result["mmacs"])))
        assert result["statistics"]["mean_mmacs_gap"] == pytest.approx(gap)
    walk = results["adjacent_step"]["statistics"]["walk"]
    assert set(walk) <= set(levels)
    assert max(abs(levels.index(a) - levels.index(b)) for a, b in itertools.pairwise(walk)) <= 1
    # level-walk steps train subnets of one level: their mean MACs lie inside that level's band
    for level, mmacs in zip(walk, results["adjacent_step"]["mmacs"]):
        assert level <= mmacs <= level + 0.2
    assert results["uniform"]["statistics"]["walk"] == [None] * 8
    assert set(results["adjacent_step"]["statistics"]["bank_fill"]) == {"0.6", "1", "1.4", "1.8"}


def test_search_step_finds_a_subnet_under_the_limit_and_measures_it(tmp_path: Path, make_stand_in_predictor) -> None:
    from moonlit.elasticvit.latency import SubnetLatency
    from moonlit.elasticvit.quickstart_search import run_search_step, search_table
    from moonlit.litepred.api import PartCache

    predictor = make_stand_in_predictor(tmp_path)  # latency ~ kernel size, from two random subnets
    cfg = compose_config("elasticvit", "quickstart", [
        f"paths.output_root={tmp_path}", f"search.predictor_dir={tmp_path / 'predictor'}", "search.rounds=3",
        "search.speedup=0.5", "search.verify=3",
        "search.evolution={population: 8, parents: 4, mutations: 2, crossovers: 2, iterations: 1}"])
    step = run_search_step(cfg, tmp_path / "qs")
    assert step["predicted_ms"] <= step["limit_ms"] and step["mmacs"] <= step["baseline_mmacs"]
    best = decode(step["encoding"])
    # the stored prediction is the predictor's, recomputed from scratch
    again = SubnetLatency(predictor, PartCache("ort-fp32")).predict([best])[0]
    assert step["predicted_ms"] == pytest.approx(again, rel=1e-9)
    assert step["mmacs"] == pytest.approx(subnet_complexity(best).macs / 1e6)
    assert step["measured_ms"] > 0 and step["baseline_ms"] > 0
    assert step["speedup"] == pytest.approx(step["baseline_ms"] / step["measured_ms"])
    assert step["prediction_error"] == pytest.approx(step["predicted_ms"] / step["measured_ms"] - 1)
    assert step["limit_ms"] == pytest.approx(step["baseline_ms_before"] / 0.5)
    # the verified candidates are the search's top 3 by fitness; the result is the first meeting the target
    candidates = step["candidates"]
    assert len(candidates) == 3 and [c["fitness"] for c in candidates] == sorted((c["fitness"] for c in candidates),
                                                                                  reverse=True)
    meeting = [i for i, c in enumerate(candidates) if c["speedup"] >= 0.5]
    assert step["met_target"] == bool(meeting)
    assert step["rank_of_result"] == (meeting[0] if meeting else max(range(3), key=lambda i: candidates[i]["speedup"]))
    assert all(c["predicted_ms"] <= step["limit_ms"] for c in candidates)
    table = search_table(step, cfg.output_dir)
    assert len(table["rows"]) == 4 and all(len(row) == len(table["columns"]) for row in table["rows"])
    assert table["rows"][step["rank_of_result"]][0].startswith("**result**")
