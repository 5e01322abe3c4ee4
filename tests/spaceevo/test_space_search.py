"""Q-T score (vs a loop-and-sort implementation and hand formulas), aging evolution, CRN re-rank, the app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.spaceevo.lut import BlockLUT, LUTRow, LUTSet
from moonlit.spaceevo.qt_score import Draw, QTScorer
from moonlit.spaceevo.space import SpaceEncoding, load_hyperspace
from moonlit.spaceevo.space_search import (
    _mutate,
    _uniform_spaces,
    aging_evolution,
    render_report,
    report,
    rerank_common_random_numbers,
    search,
)

RELEASED = Path(__file__).resolve().parents[3] / "shared" / "data" / "spaceevo" / "block_lut" / "onnxw"  # shared/ beside the clone
PUBLISHED = "onnxw-151122-023231"
OTHER_MS = [1.34, 1.69, 2.06]


def _write_synthetic_luts(folder: Path, rows_per_resolution: int, seed: int, constant: bool = False,
                          hyperspace: str = "onnxw") -> LUTSet:
    """A complete LUT folder; ``constant``: every row of a table has NSR 0.1*stage, latency = stage ms."""
    spec = load_hyperspace(hyperspace)
    rng = np.random.default_rng(seed)
    for stage, windows in enumerate(spec.num_windows, 1):
        factor = spec.input_downsample(f"stage{stage}")
        for block in range(len(spec.block_types)):
            for window in range(windows):
                rows = []
                for r in spec.lut_resolutions:
                    for _ in range(rows_per_resolution + int(rng.integers(3))):  # unequal counts per resolution
                        nsr = 0.1 * stage if constant else float(rng.uniform(0.05, 0.5))
                        ms = float(stage) if constant else float(rng.uniform(0.2, 3.0)) * r / 160
                        rows.append(LUTRow(((3, 32, 4),), (1, 16, r // factor, r // factor), nsr, 1.0, 0.1, ms))
                rng.shuffle(rows)  # the scorer must not rely on file order
                BlockLUT(stage, block, window, rows).write(folder)
    return LUTSet.read(folder, hyperspace)


def _loop_score(luts: LUTSet, space: SpaceEncoding, draw: Draw, constraints: list[float], t: float, a: float,
                top: int) -> float:
    """The reference's algorithm, one sample at a time: sort by latency, cut at c, sort by loss, mean of top."""
    spec = luts.spec
    resolution_of_sample = [r for r, n in zip(spec.lut_resolutions, draw.samples_per_resolution) for _ in range(n)]
    samples = []
    for j, r in enumerate(resolution_of_sample):
        loss, latency = 0.0, OTHER_MS[spec.lut_resolutions.index(r)]
        for stage in range(1, 7):
            lut = luts[(stage, space.blocks[stage - 1], space.windows[stage - 1])]
            rows = [row for row, res in zip(lut.rows, lut.resolutions(spec)) if res == r]
            row = rows[int(draw.uniforms[stage - 1, j] * len(rows))]
            loss += row.nsr
            latency += row.latency_ms
        samples.append((latency, loss))
    samples.sort()
    score = 0.0
    for c in constraints:
        feasible = sorted(loss for latency, loss in samples if latency <= c)
        p = len(feasible) / len(samples) + 1e-5
        top_loss = sum(feasible[:top]) / len(feasible[:top]) if feasible else 1e5
        score += 1 / (max(1.0, (t / p) ** a) * top_loss)
    return score


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> LUTSet:
    return _write_synthetic_luts(tmp_path_factory.mktemp("luts"), rows_per_resolution=12, seed=0)


@pytest.fixture(scope="module")
def released() -> LUTSet:
    if not RELEASED.is_dir():
        pytest.skip(f"{RELEASED} not available")
    return LUTSet.read(RELEASED, "onnxw")


@pytest.mark.parametrize("constraints", [[8.0], [8.0, 11.0], [2.0]])
def test_vectorized_score_equals_loop_and_sort_implementation(synthetic: LUTSet, constraints: list[float]) -> None:
    scorer = QTScorer(synthetic, OTHER_MS, constraints, t=0.3, a=0.5, top=7, num_samples=600, batch_size=50)
    rng = np.random.default_rng(1)
    for text in ["onnxw-012345-012301", PUBLISHED]:
        space = SpaceEncoding.decode(text)
        draw = scorer.draw(rng)
        assert sum(draw.samples_per_resolution) == 600 and all(n % 50 == 0 for n in draw.samples_per_resolution)
        fast = scorer.score_samples(*scorer.sample_space(space, draw)).score
        assert fast == pytest.approx(_loop_score(synthetic, space, draw, constraints, 0.3, 0.5, 7), rel=1e-12)


def test_score_by_hand_on_constant_tables(tmp_path: Path) -> None:
    luts = _write_synthetic_luts(tmp_path, rows_per_resolution=4, seed=0, constant=True)
    space = SpaceEncoding.decode(PUBLISHED)
    # loss = 0.1*(1+..+6) = 2.1; latency = 1+..+6 = 21 ms + other(r) in [22.34, 23.06]
    met = QTScorer(luts, OTHER_MS, [30.0, 24.0], t=0.1, a=0.01, num_samples=1000, batch_size=100)
    result = met.score(space, np.random.default_rng(0))
    assert result.p == pytest.approx((1 + 1e-5, 1 + 1e-5)) and result.latency_loss == (1.0, 1.0)
    assert result.score == pytest.approx(2 / 2.1)
    missed = QTScorer(luts, OTHER_MS, [20.0], t=0.1, a=0.01, num_samples=1000, batch_size=100)
    result = missed.score(space, np.random.default_rng(0))
    assert result.top_loss == (1e5,) and result.score == pytest.approx(1 / ((0.1 / 1e-5) ** 0.01 * 1e5))
    # 22.5 ms: only the r160 samples (22.34 ms) meet it -> p = their share, penalty (t/p)^a
    half = QTScorer(luts, OTHER_MS, [22.5], t=0.9, a=0.5, num_samples=1000, batch_size=100)
    draw = half.draw(np.random.default_rng(3))
    p = draw.samples_per_resolution[0] / 1000 + 1e-5
    result = half.score_samples(*half.sample_space(space, draw))
    assert result.score == pytest.approx(1 / (max(1.0, (0.9 / p) ** 0.5) * 2.1))


def test_scorer_rejects_bad_inputs(synthetic: LUTSet) -> None:
    with pytest.raises(ValueError, match="2 other-latency values .* one per LUT resolution"):
        QTScorer(synthetic, [1.0, 2.0], [10])
    with pytest.raises(ValueError, match="num_samples 1000 is not a positive multiple of batch_size 300"):
        QTScorer(synthetic, OTHER_MS, [10], num_samples=1000, batch_size=300)
    with pytest.raises(ValueError, match="no latency constraint"):
        QTScorer(synthetic, OTHER_MS, [])


def test_mutations_change_exactly_one_digit_to_a_legal_other_value() -> None:
    rng = np.random.default_rng(0)
    space = SpaceEncoding.decode(PUBLISHED)
    seen_blocks = set()
    for _ in range(300):
        child = _mutate(space, rng, "block")
        changed = [i for i in range(6) if child.blocks[i] != space.blocks[i]]
        assert len(changed) == 1 and child.windows == space.windows
        seen_blocks.add((changed[0], child.blocks[changed[0]]))
        child = _mutate(space, rng, "window")
        assert sum(a != b for a, b in zip(child.windows, space.windows)) == 1 and child.blocks == space.blocks
    assert len(seen_blocks) == 6 * 5  # every stage, every other block type


class _DistanceScorer:
    """Deterministic stand-in: score = -(digits differing from a target space); the optimum is known."""

    def __init__(self, target: str) -> None:
        self.spec = load_hyperspace("onnxw")
        self.target = SpaceEncoding.decode(target)
        self.calls = 0

    def score(self, space: SpaceEncoding, rng: np.random.Generator) -> object:
        self.calls += 1
        distance = sum(a != b for a, b in zip(space.blocks + space.windows, self.target.blocks + self.target.windows))
        return type("R", (), {"score": -float(distance)})()


def test_aging_evolution_finds_a_known_optimum_without_duplicates() -> None:
    scorer = _DistanceScorer("onnxw-230451-131302")
    history = aging_evolution(scorer, np.random.default_rng(0), population_size=60, tournament_size=15,
                              budget=1500, progress=False)
    spaces = [e.space for e in history]
    assert len(spaces) == 1500 == scorer.calls == len(set(spaces))  # a real duplicate check
    assert spaces[:24] == _uniform_spaces("onnxw")  # 6 block types x 4 windows, as the reference seeds
    random_init = spaces[24:60]
    assert {b for s in random_init for b in s.blocks} == set(range(6))  # not the reference's fixed [1,2,1,2,2,2]
    assert max(e.result.score for e in history) == 0.0  # the target itself was reached
    again = aging_evolution(_DistanceScorer("onnxw-230451-131302"), np.random.default_rng(0), population_size=60,
                            tournament_size=15, budget=300, progress=False)
    assert [e.space for e in again] == spaces[:300]  # seeded: reproducible


def test_crn_rerank_scores_identical_spaces_identically(synthetic: LUTSet) -> None:
    scorer = QTScorer(synthetic, OTHER_MS, [8.0, 11.0], num_samples=2000, batch_size=100)
    spaces = [SpaceEncoding.decode(s) for s in ["onnxw-000000-000000", "onnxw-012345-012301", PUBLISHED]]
    rows = rerank_common_random_numbers(scorer, spaces + [spaces[1]], repeats=4, rng=np.random.default_rng(0))
    means = [row["mean"] for row in rows]
    assert means == sorted(means, reverse=True) and [row["rank"] for row in rows] == [1, 2, 3, 4]
    twins = [row for row in rows if row["space"] == spaces[1].encode()]
    assert twins[0]["mean"] == twins[1]["mean"] and twins[0]["std"] == twins[1]["std"]


def test_reduced_onnxw_search_published_space_within_noise_of_the_best(released: LUTSet) -> None:
    """The README target at reduced budget: constraints 10+15 ms, t=0.08, a=0.01, other(r)=1.34/1.69/2.06."""
    scorer = QTScorer(released, OTHER_MS, [10, 15], t=0.08, a=0.01)
    rng = np.random.default_rng(0)
    history = aging_evolution(scorer, rng, population_size=100, tournament_size=25, budget=600, progress=False)
    top = [e.space for e in sorted(history, key=lambda e: -e.result.score)[:15]]
    published, poor = SpaceEncoding.decode(PUBLISHED), SpaceEncoding.decode("onnxw-333333-000000")
    rows = {r["space"]: r for r in rerank_common_random_numbers(scorer, top + [published, poor], 20, rng)}
    best = max(rows.values(), key=lambda r: r["mean"])
    assert best["mean"] > 0.80  # the search climbed to the published region (uniform seeds score < 0.78)
    gap = rows[PUBLISHED]
    assert gap["gap_to_best"] <= 3 * gap["gap_std"] + 0.001, gap  # within noise (0.1 %) of the best
    assert rows[poor.encode()]["gap_to_best"] > 20 * rows[poor.encode()]["gap_std"]  # the check can fail


def test_app_writes_ranked_json_markdown_and_plot(synthetic: LUTSet, tmp_path: Path) -> None:
    folder = tmp_path / "luts"
    synthetic.write(folder)
    cfg = compose_config("spaceevo", "space_search", [
        f"lut_dir={folder}", f"output_dir={tmp_path / 'out'}", "constraints_ms=[8,11]", "num_samples=2000",
        "batch_size=100", "evolution.population=30", "evolution.tournament=8", "evolution.budget=120",
        "rerank.top=5", "rerank.repeats=3", "progress=false"])
    result = search(cfg)
    out = Path(result["output_dir"])
    assert out.name == "onnxw_c8+11_t0.08_a0.01_seed0"
    saved = json.loads((out / "space_search.json").read_text())
    assert len(saved["history"]) == 120 and len(saved["ranked"]) == 6  # top 5 + the tracked published space
    assert saved["tracked"][0]["space"] == PUBLISHED
    assert (out / "score_over_search.png").stat().st_size > 1000
    markdown = (out / "space_search.md").read_text()
    assert markdown == render_report(saved) == report(out / "space_search.json")
    assert f"| 1 | {saved['ranked'][0]['space']}" in markdown and "120 spaces evaluated" in markdown
    candidates = search(compose_config("spaceevo", "space_search", [
        f"lut_dir={folder}", f"output_dir={tmp_path / 'cand'}", "num_samples=2000", "batch_size=100",
        "rerank.repeats=3", "candidates=[111111_000000,012345_012301,onnxw-222222-000000]"]))
    # Hydra reads 111111_000000 as an int; the 6+6 digits are restored (leading zeros included)
    assert sorted(r["space"] for r in candidates["ranked"]) == ["onnxw-012345-012301", "onnxw-111111-000000",
                                                                "onnxw-222222-000000"]
    assert candidates["other_latency_ms"] == {"160": 1.34, "192": 1.69, "224": 2.06}


def test_other_latency_from_a_predictor(synthetic: LUTSet, tmp_path: Path) -> None:
    synthetic.write(tmp_path / "luts")
    # any callable resolution -> ms; float(r) makes other(r) = r ms, so no sample meets 8 ms
    result = search(compose_config("spaceevo", "space_search", [
        f"lut_dir={tmp_path / 'luts'}", f"output_dir={tmp_path / 'out'}", "num_samples=1000", "batch_size=100",
        "rerank.repeats=2", "constraints_ms=[8]", "candidates=[onnxw-111111-000000]",
        "other_latency.predictor={_target_: builtins.float, _partial_: true}"]))
    assert result["other_latency_ms"] == {"160": 160.0, "192": 192.0, "224": 224.0}
    assert result["ranked"][0]["mean"] == pytest.approx(1 / ((0.08 / 1e-5) ** 0.01 * 1e5))


def test_default_lut_dir_resolves_from_the_repository_root() -> None:
    from moonlit.spaceevo.space_search import _resolve_lut_dir

    cfg = compose_config("spaceevo", "space_search")
    assert cfg.lut_dir == "../shared/data/spaceevo/block_lut/onnxw" and cfg.evolution.budget == 5000
    if RELEASED.is_dir():
        assert _resolve_lut_dir(cfg.lut_dir).resolve() == RELEASED.resolve()
    with pytest.raises(FileNotFoundError, match="pass an absolute lut_dir"):
        _resolve_lut_dir("no/such/luts")


def test_tracked_spaces_follow_the_hyperspace(tmp_path: Path) -> None:
    """hyperspace=mobilew alone tracks mobilew's published space; a space of another hyperspace is named."""
    assert list(compose_config("spaceevo", "space_search", [])["tracked_spaces"]) == [PUBLISHED]
    assert list(compose_config("spaceevo", "space_search", ["hyperspace=onnxw_tiny"])["tracked_spaces"]) == []
    folder = tmp_path / "mobilew_luts"
    _write_synthetic_luts(folder, rows_per_resolution=3, seed=2, hyperspace="mobilew")
    small = [f"lut_dir={folder}", "num_samples=500", "batch_size=100", "evolution.population=10",
             "evolution.tournament=4", "evolution.budget=20", "rerank.top=3", "rerank.repeats=2", "progress=false"]
    result = search(compose_config("spaceevo", "space_search",
                                   ["hyperspace=mobilew", f"output_dir={tmp_path / 'out'}", *small]))
    assert [t["space"] for t in result["tracked"]] == ["mobilew-122222-155400"]  # spaceevo@pixel4
    assert result["ranked"][0]["space"].startswith("mobilew-")
    with pytest.raises(InputError, match=r"tracked_spaces: 'onnxw-151122-023231' is a 'onnxw' space, expected a "
                                         r"'mobilew' space"):
        search(compose_config("spaceevo", "space_search", ["hyperspace=mobilew", f"tracked_spaces=[{PUBLISHED}]",
                                                           f"output_dir={tmp_path / 'bad'}", *small]))
    assert not (tmp_path / "bad").exists()  # refused before anything is written
