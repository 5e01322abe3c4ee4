"""Quickstart section "ElasticViT" (moonlit.elasticvit.quickstart) on a short run of two samplers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from moonlit.common.config import compose_config
from moonlit.elasticvit.flops import subnet_complexity
from moonlit.elasticvit.quickstart import run_quickstart
from moonlit.elasticvit.space import decode
from moonlit.elasticvit.train_step import space_from_config
from omegaconf import OmegaConf


def test_quickstart_writes_the_section(tmp_path: Path) -> None:
    cfg = compose_config("elasticvit", "quickstart", [
        f"paths.output_root={tmp_path}", "samplers=[adjacent_step,uniform]", "steps=8", "data.num_classes=4",
        "data.train_per_class=8", "data.val_per_class=2"])
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
    assert set(walk) <= set(levels) and max(abs(levels.index(a) - levels.index(b)) for a, b in itertools.pairwise(walk)) <= 1
    # level-walk steps train subnets of one level: their mean MACs lie inside that level's band
    for level, mmacs in zip(walk, results["adjacent_step"]["mmacs"]):
        assert level <= mmacs <= level + 0.2
    assert results["uniform"]["statistics"]["walk"] == [None] * 8
    assert set(results["adjacent_step"]["statistics"]["bank_fill"]) == {"0.6", "1", "1.4", "1.8"}
