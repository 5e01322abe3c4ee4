"""Search-space search of SpaceEvo (ICCV'23, arXiv 2303.08308, Sec. 3.3): aging evolution over the Q-T score.

Spaces of a hyperspace are scored by :class:`~moonlit.spaceevo.qt_score.QTScorer` (the Q-T score on
the block LUTs) and searched by aging evolution. Differences from the reference, on purpose: a
random initial population over all block types, a real duplicate check, and the final top set
re-ranked with *common random numbers* (every candidate scored on the same draws, several times)
so near-ties are decided by the score, not by sampling noise.

``python -m moonlit.spaceevo.space_search`` (config ``configs/spaceevo/space_search.yaml``).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from moonlit.common.config import hydra_app, to_container
from moonlit.common.errors import InputError
from moonlit.common.report import render_table

from .lut import LUTSet
from .qt_score import QTScore, QTScorer
from .space import SEARCHABLE_STAGES, SpaceEncoding, load_hyperspace

__all__ = ["Evaluated", "aging_evolution", "evaluate_spaces", "main", "render_report", "report",
           "rerank_common_random_numbers", "run", "search"]

logger = logging.getLogger("moonlit.spaceevo.space_search")
REPO_ROOT = Path(__file__).resolve().parents[1]


# --- aging evolution -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Evaluated:
    space: SpaceEncoding
    result: QTScore
    index: int  # order of evaluation


def _uniform_spaces(hyperspace: str) -> list[SpaceEncoding]:
    """Each block type in every stage with window j (clipped per stage): the reference's initial spaces."""
    spec = load_hyperspace(hyperspace)
    return [SpaceEncoding(hyperspace, (b,) * SEARCHABLE_STAGES, tuple(min(j, n - 1) for n in spec.num_windows))
            for b in range(len(spec.block_types)) for j in range(max(spec.num_windows))]


def _random_space(hyperspace: str, rng: np.random.Generator) -> SpaceEncoding:
    spec = load_hyperspace(hyperspace)
    return SpaceEncoding(hyperspace, tuple(int(b) for b in rng.integers(len(spec.block_types), size=SEARCHABLE_STAGES)),
                         tuple(int(rng.integers(n)) for n in spec.num_windows))


def _mutate(space: SpaceEncoding, rng: np.random.Generator, part: str) -> SpaceEncoding:
    """Change one stage's block type (``part='block'``) or width window (``'window'``) to a different value."""
    spec = space.spec
    if part not in ("block", "window"):
        raise ValueError(f"mutation part '{part}' is not 'block' or 'window'")
    if part == "block":
        choices = [len(spec.block_types)] * SEARCHABLE_STAGES
        values = list(space.blocks)
    else:
        choices, values = list(spec.num_windows), list(space.windows)
    stage = int(rng.choice([i for i, n in enumerate(choices) if n > 1]))
    new = int(rng.integers(choices[stage] - 1))
    values[stage] = new + (new >= values[stage])  # uniform over the other values
    if part == "block":
        return SpaceEncoding(space.hyperspace, tuple(values), space.windows)
    return SpaceEncoding(space.hyperspace, space.blocks, tuple(values))


def aging_evolution(scorer: QTScorer, rng: np.random.Generator, population_size: int = 500,
                    tournament_size: int = 125, budget: int = 5000, progress: bool = True,
                    max_stall: int = 10_000) -> list[Evaluated]:
    """Regularized (aging) evolution over spaces; returns every evaluated space in evaluation order.

    Each cycle samples ``tournament_size`` of the population, takes the best as parent and makes two
    children (one block-type mutation, one window mutation); each new child is evaluated, joins the
    population, and the oldest member leaves. Spaces already evaluated are never evaluated again.
    """
    if not 0 < tournament_size <= population_size <= budget:
        raise ValueError(f"need 0 < tournament_size ({tournament_size}) <= population_size ({population_size}) "
                         f"<= budget ({budget})")
    hyperspace = scorer.spec.name
    history: dict[SpaceEncoding, Evaluated] = {}
    population: collections.deque[Evaluated] = collections.deque()
    bar = tqdm(total=budget, desc=f"space search ({hyperspace})", disable=not progress)

    def evaluate(space: SpaceEncoding) -> Evaluated:
        item = Evaluated(space, scorer.score(space, rng), len(history))
        history[space] = item
        population.append(item)
        bar.update()
        return item

    for space in _uniform_spaces(hyperspace)[:population_size]:
        evaluate(space)
    stall = 0
    while len(population) < population_size and stall < max_stall:
        space = _random_space(hyperspace, rng)
        if space in history:
            stall += 1
            continue
        evaluate(space)
    stall = 0
    while len(history) < budget and stall < max_stall:
        picks = rng.choice(len(population), size=tournament_size, replace=False)
        parent = max((population[i] for i in picks), key=lambda e: e.result.score)
        stall += 1
        for part in ("block", "window"):
            child = _mutate(parent.space, rng, part)
            if child not in history and len(history) < budget:
                evaluate(child)
                population.popleft()
                stall = 0
    bar.close()
    if len(history) < budget:
        logger.warning("evolution stopped after %d evaluations: no new space in %d cycles", len(history), max_stall)
    return sorted(history.values(), key=lambda e: e.index)


# --- re-ranking with common random numbers ---------------------------------------------------------

def rerank_common_random_numbers(scorer: QTScorer, spaces: Sequence[SpaceEncoding], repeats: int,
                                 rng: np.random.Generator) -> list[dict[str, Any]]:
    """Score every space on the same ``repeats`` draws; sorted by mean score, best first.

    Sharing the draws makes score differences far less noisy than independent single passes, and
    the paired difference to the best (``gap_to_best`` ± ``gap_std``) says whether a gap is noise.
    """
    scores = np.zeros((len(spaces), repeats))
    for r in range(repeats):
        draw, cache = scorer.draw(rng), {}
        for i, space in enumerate(spaces):
            scores[i, r] = scorer.score_samples(*scorer.sample_space(space, draw, cache)).score
    means = scores.mean(axis=1)
    best = int(np.argmax(means))
    rows = []
    for i, space in enumerate(spaces):
        gaps = scores[best] - scores[i]
        rows.append({"space": space.encode(), "mean": float(means[i]),
                     "std": float(scores[i].std(ddof=1)) if repeats > 1 else 0.0,
                     "gap_to_best": float(gaps.mean()),
                     "gap_std": float(gaps.std(ddof=1) / np.sqrt(repeats)) if repeats > 1 else 0.0})
    rows.sort(key=lambda row: -row["mean"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def evaluate_spaces(scorer: QTScorer, spaces: Sequence[SpaceEncoding], repeats: int,
                    rng: np.random.Generator) -> list[dict[str, Any]]:
    """The reference's ``--supernet_choices`` mode: score given spaces (with common random numbers)."""
    rows = rerank_common_random_numbers(scorer, spaces, repeats, rng)
    for row in rows:
        row["min_ms"], row["max_ms"] = scorer.latency_range(SpaceEncoding.decode(row["space"]))
    return rows


# --- the app -----------------------------------------------------------------------------------------

def _resolve_lut_dir(lut_dir: str) -> Path:
    """Absolute paths as given; relative ones from the working directory, else from the repository root."""
    path = Path(lut_dir).expanduser()
    if path.is_absolute() or path.is_dir():
        return path
    from_root = REPO_ROOT / path
    if from_root.is_dir():
        return from_root
    raise FileNotFoundError(f"LUT folder '{lut_dir}' found neither in {Path.cwd()} nor in {REPO_ROOT}; "
                            f"pass an absolute lut_dir=...")


def _other_latency(cfg: DictConfig, resolutions: Sequence[int]) -> list[float]:
    """other(r) per LUT resolution: from ``other_latency.predictor`` (a callable r -> ms) if set, else constants."""
    other = cfg.other_latency
    if other.predictor is not None:
        from hydra.utils import instantiate

        predictor: Callable[[int], float] = instantiate(other.predictor)
        return [float(predictor(int(r))) for r in resolutions]
    if list(other.resolutions) != list(resolutions):
        raise ValueError(f"other_latency.resolutions {list(other.resolutions)} must equal the LUT resolutions "
                         f"{list(resolutions)}")
    return [float(v) for v in other.ms]


def build_scorer(cfg: DictConfig) -> QTScorer:
    luts = LUTSet.read(_resolve_lut_dir(cfg.lut_dir), cfg.hyperspace)
    return QTScorer(luts, _other_latency(cfg, luts.spec.lut_resolutions), list(cfg.constraints_ms), t=cfg.t, a=cfg.a,
                    top=cfg.top_losses, num_samples=cfg.num_samples, batch_size=cfg.batch_size)


def _space_from_config(value: str | int, hyperspace: str) -> SpaceEncoding:
    """A space from a config list; Hydra reads ``111111_000000`` as the int 111111000000, restored here."""
    if isinstance(value, int) and not isinstance(value, bool):
        digits = f"{value:0{2 * SEARCHABLE_STAGES}d}"
        value = f"{digits[:SEARCHABLE_STAGES]}-{digits[SEARCHABLE_STAGES:]}"
    return SpaceEncoding.decode(str(value), hyperspace)


def _spaces_from_config(values: Sequence[str | int], hyperspace: str, field: str) -> list[SpaceEncoding]:
    """Every space of the config list ``field``, each of ``hyperspace``; a bad one is named with its field."""
    try:
        return [_space_from_config(value, hyperspace) for value in values]
    except InputError as err:
        raise InputError(f"{field}: {err}") from err


def run_tag(cfg: DictConfig) -> str:
    constraints = "+".join(f"{c:g}" for c in cfg.constraints_ms)
    return f"{cfg.hyperspace}_c{constraints}_t{cfg.t:g}_a{cfg.a:g}_seed{cfg.seed}"


def search(cfg: DictConfig) -> dict[str, Any]:
    """Aging evolution + CRN re-rank (or, with ``candidates``, only score those); writes JSON, markdown, PNG."""
    start = time.perf_counter()
    scorer = build_scorer(cfg)
    rng = np.random.default_rng(cfg.seed)
    out_dir = Path(cfg.output_dir) / run_tag(cfg)
    tracked = _spaces_from_config(cfg.tracked_spaces, cfg.hyperspace, "tracked_spaces")
    result: dict[str, Any] = {"hyperspace": cfg.hyperspace, "tag": run_tag(cfg), "config": to_container(cfg),
                              "other_latency_ms": dict(zip(map(str, scorer.resolutions),
                                                           scorer.other_latency_ms.tolist()))}
    if cfg.candidates:
        spaces = _spaces_from_config(cfg.candidates, cfg.hyperspace, "candidates")
        result["ranked"] = evaluate_spaces(scorer, spaces, cfg.rerank.repeats, rng)
        result["history"] = []
        result["timing"] = {"total_s": time.perf_counter() - start}
        return _write_outputs(result, out_dir)

    setup_s = time.perf_counter() - start
    history = aging_evolution(scorer, rng, population_size=cfg.evolution.population,
                              tournament_size=cfg.evolution.tournament, budget=cfg.evolution.budget,
                              progress=cfg.progress)
    search_s = time.perf_counter() - start - setup_s
    by_score = sorted(history, key=lambda e: -e.result.score)
    single_rank = {e.space: rank for rank, e in enumerate(by_score, 1)}
    single = {e.space: e.result for e in history}
    top = [e.space for e in by_score[: cfg.rerank.top]]
    candidates = top + [s for s in tracked if s not in top]
    rerank_start = time.perf_counter()
    ranked = evaluate_spaces(scorer, candidates, cfg.rerank.repeats, rng)
    rerank_s = time.perf_counter() - rerank_start
    for row in ranked:
        space = SpaceEncoding.decode(row["space"])
        row["single_pass_rank"] = single_rank.get(space)
        row["single_pass"] = asdict(single[space]) if space in single else None
        row["in_search_top"] = space in top
    result.update(
        ranked=ranked,
        tracked=[{"space": s.encode(), "single_pass_rank": single_rank.get(s),
                  "crn_rank": next(r["rank"] for r in ranked if r["space"] == s.encode())} for s in tracked],
        timing={"evaluations": len(history), "search_s": search_s, "ms_per_evaluation": 1e3 * search_s / len(history),
                "rerank_s": rerank_s, "total_s": time.perf_counter() - start},
        history=[[e.space.encode(), e.result.score] for e in history],
    )
    return _write_outputs(result, out_dir)


def render_report(result: dict[str, Any], rows: int | None = 20) -> str:
    """Markdown table of the ranked spaces of a ``space_search.json`` (CRN mean, single pass, latency range)."""
    constraints = "+".join(f"{c:g}" for c in result["config"]["constraints_ms"])
    table = {
        "caption": f"Q-T score of '{result['hyperspace']}' spaces, constraints {constraints} ms "
                   f"(t={result['config']['t']:g}, a={result['config']['a']:g})",
        "columns": ["rank", "space", "mean score", "std", "gap to best", "single-pass rank", "min ms", "max ms"],
        "rows": [[row["rank"], row["space"] + ("" if row.get("in_search_top", True) else " (tracked)"),
                  row["mean"], row["std"], row["gap_to_best"], row.get("single_pass_rank"), row["min_ms"],
                  row["max_ms"]] for row in result["ranked"][:rows]],
        "floatfmt": ".4f",
        "source": f"moonlit.spaceevo.space_search, {result['config']['rerank']['repeats']} draws of "
                  f"{result['config']['num_samples']} samples shared by all spaces (common random numbers)",
    }
    lines = [render_table(table)]
    timing = result.get("timing", {})
    if "evaluations" in timing:
        lines.append(f"\n{timing['evaluations']} spaces evaluated in {timing['search_s']:.1f} s "
                     f"({timing['ms_per_evaluation']:.1f} ms each), re-rank {timing['rerank_s']:.1f} s.")
    for item in result.get("tracked", []):
        lines.append(f"\nTracked {item['space']}: single-pass rank {item['single_pass_rank']}, "
                     f"re-ranked {item['crn_rank']}.")
    return "\n".join(lines) + "\n"


def report(json_path: str | os.PathLike[str], rows: int | None = 20) -> str:
    """Markdown table of a saved ``space_search.json``."""
    return render_report(json.loads(Path(json_path).read_text()), rows)


def _plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = np.array([score for _, score in result["history"]])
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(np.arange(scores.size), scores, s=3, alpha=0.4, label="evaluated space")
    ax.plot(np.maximum.accumulate(scores), color="C1", label="best so far (single pass)")
    ax.set_ylim(np.percentile(scores, 5), scores.max() * 1.01)
    ax.set_xlabel("evaluation")
    ax.set_ylabel("Q-T score")
    ax.set_title(result["tag"])
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "space_search.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out_dir / "space_search.json")
    (out_dir / "space_search.md").write_text(render_report(result))
    if result["history"]:
        _plot(result, out_dir / "score_over_search.png")
    result["output_dir"] = str(out_dir)
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.spaceevo.space_search``: :func:`search`'s result."""
    return search(cfg)


@hydra_app("spaceevo", "space_search")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    print(render_report(result))
    print(f"outputs in {result['output_dir']}")


if __name__ == "__main__":
    main()
