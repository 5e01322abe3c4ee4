"""Search-space search of SpaceEvo (ICCV'23, arXiv 2303.08308, Sec. 3.3): Q-T score + aging evolution.

**Q-T score** of a search space (the reference's ``BlockKDSearcher``): draw N sub-networks from the
block LUTs, in batches of ``batch_size`` that share one resolution r from the LUT resolutions; each
stage contributes a uniformly random LUT row of its (stage, block, window) table at r.
``loss = Σ NSR``, ``latency = Σ ms + other(r)`` (first_conv + stage0 + head). For each constraint c::

    p_c = #{latency <= c} / N + 1e-5
    L_c = max(1, (t / p_c) ** a)                 # penalty for spaces that rarely meet c
    A_c = mean of the `top` smallest losses with latency <= c   (1e5 if none)
    score = Σ_c 1 / (L_c * A_c)

Differences from the reference, on purpose: vectorized numpy with an explicit ``Generator``
(6-8 ms per evaluation with two constraints, vs ~0.12 s per constraint), one sample set shared by
all constraints, a random initial population over all block types, a real duplicate check, and the
final top set re-ranked with *common random numbers* (every candidate scored on the same draws,
several times) so near-ties are decided by the score, not by sampling noise.

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
from moonlit.common.config import hydra_app, to_container
from moonlit.common.report import render_table
from omegaconf import DictConfig
from tqdm import tqdm

from .lut import LUTSet
from .space import SEARCHABLE_STAGES, SpaceEncoding, load_hyperspace

__all__ = ["Draw", "Evaluated", "QTScore", "QTScorer", "aging_evolution", "evaluate_spaces", "main",
           "render_report", "report", "rerank_common_random_numbers", "search"]

logger = logging.getLogger("moonlit.spaceevo.space_search")
NO_FEASIBLE_LOSS = 1e5  # the reference's top-loss when no sample meets the constraint
P_EPSILON = 1e-5        # added to p_c by the reference so that L_c stays finite
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class QTScore:
    score: float
    p: tuple[float, ...]             # fraction of samples meeting each constraint (+1e-5)
    latency_loss: tuple[float, ...]  # L_c
    top_loss: tuple[float, ...]      # A_c


@dataclass(frozen=True)
class Draw:
    """Random numbers for one Q-T evaluation: samples per resolution (contiguous) and a uniform per stage/sample."""

    samples_per_resolution: tuple[int, ...]
    uniforms: np.ndarray  # (stages, N) in [0, 1)


class QTScorer:
    """Q-T score of search spaces from a LUT folder; ``other_latency_ms[i]`` belongs to ``lut_resolutions[i]``."""

    def __init__(self, luts: LUTSet, other_latency_ms: Sequence[float], constraints_ms: Sequence[float],
                 t: float = 0.1, a: float = 0.01, top: int = 50, num_samples: int = 100_000,
                 batch_size: int = 500) -> None:
        self.spec = luts.spec
        self.resolutions = self.spec.lut_resolutions
        if len(other_latency_ms) != len(self.resolutions):
            raise ValueError(f"{len(other_latency_ms)} other-latency values {list(other_latency_ms)}, expected one "
                             f"per LUT resolution {list(self.resolutions)}")
        if not constraints_ms:
            raise ValueError("no latency constraint given; expected at least one, e.g. [10, 15]")
        if num_samples % batch_size or num_samples <= 0:
            raise ValueError(f"num_samples {num_samples} is not a positive multiple of batch_size {batch_size}")
        missing = luts.missing()
        if missing:
            raise ValueError(f"LUT set for '{self.spec.name}' lacks {len(missing)} tables, e.g. {missing[:3]}")
        self.other_latency_ms = np.asarray(other_latency_ms, dtype=np.float64)
        self.constraints_ms = tuple(float(c) for c in constraints_ms)
        self.t, self.a, self.top = float(t), float(a), int(top)
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        # All tables in two flat arrays, each table's rows grouped by resolution: (start, count) per resolution.
        losses, latencies, self.segments = [], [], {}
        offset = 0
        for lut in luts:
            resolution = lut.resolutions(self.spec)
            loss, latency = lut.arrays()
            bounds = []
            for r in self.resolutions:
                rows = np.flatnonzero(resolution == r)
                if rows.size == 0:
                    raise ValueError(f"{lut.file_name} has no rows at resolution {r}")
                losses.append(loss[rows])
                latencies.append(latency[rows])
                bounds.append((offset, rows.size))
                offset += rows.size
            self.segments[(lut.stage, lut.block, lut.window)] = bounds
        self.loss_table = np.concatenate(losses)
        self.latency_table = np.concatenate(latencies)

    def draw(self, rng: np.random.Generator) -> Draw:
        batches = rng.integers(len(self.resolutions), size=self.num_samples // self.batch_size)
        counts = np.bincount(batches, minlength=len(self.resolutions)) * self.batch_size
        return Draw(tuple(int(c) for c in counts), rng.random((SEARCHABLE_STAGES, self.num_samples)))

    def stage_samples(self, stage: int, block: int, window: int, draw: Draw) -> tuple[np.ndarray, np.ndarray]:
        """(loss, latency) of every sample's sub-stage in ``stage`` (1..6) under ``draw``."""
        rows = np.empty(self.num_samples, dtype=np.intp)
        lo = 0
        for (start, count), n in zip(self.segments[(stage, block, window)], draw.samples_per_resolution):
            rows[lo: lo + n] = draw.uniforms[stage - 1, lo: lo + n] * count
            rows[lo: lo + n] += start
            lo += n
        return self.loss_table[rows], self.latency_table[rows]

    def sample_space(self, space: SpaceEncoding, draw: Draw,
                     cache: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Total (loss, latency) of the N sampled subnets; ``cache`` reuses stage samples of the same draw."""
        if space.hyperspace != self.spec.name:
            raise ValueError(f"space '{space}' is not of hyperspace '{self.spec.name}' of these LUTs")
        loss = np.zeros(self.num_samples)
        latency = np.repeat(self.other_latency_ms, draw.samples_per_resolution)
        for stage, (block, window) in enumerate(zip(space.blocks, space.windows), 1):
            key = (stage, block, window)
            if cache is not None and key in cache:
                stage_loss, stage_latency = cache[key]
            else:
                stage_loss, stage_latency = self.stage_samples(stage, block, window, draw)
                if cache is not None:
                    cache[key] = (stage_loss, stage_latency)
            loss += stage_loss
            latency += stage_latency
        return loss, latency

    def score_samples(self, loss: np.ndarray, latency: np.ndarray) -> QTScore:
        score, ps, penalties, top_losses = 0.0, [], [], []
        for constraint in self.constraints_ms:
            feasible = loss[latency <= constraint]
            p = feasible.size / self.num_samples + P_EPSILON
            if feasible.size == 0:
                top_loss = NO_FEASIBLE_LOSS
            elif feasible.size <= self.top:
                top_loss = float(feasible.mean())
            else:
                top_loss = float(np.partition(feasible, self.top - 1)[: self.top].mean())
            penalty = max(1.0, (self.t / p) ** self.a)
            score += 1.0 / (penalty * top_loss)
            ps.append(p), penalties.append(penalty), top_losses.append(top_loss)
        return QTScore(score, tuple(ps), tuple(penalties), tuple(top_losses))

    def score(self, space: SpaceEncoding, rng: np.random.Generator) -> QTScore:
        """One single-pass Q-T evaluation with fresh random numbers (what the reference does)."""
        return self.score_samples(*self.sample_space(space, self.draw(rng)))

    def latency_range(self, space: SpaceEncoding) -> tuple[float, float]:
        """(smallest latency at the lowest LUT resolution, largest at the highest) over the LUT rows."""
        low = high = 0.0
        for stage, (block, window) in enumerate(zip(space.blocks, space.windows), 1):
            bounds = self.segments[(stage, block, window)]
            (s0, n0), (s1, n1) = bounds[0], bounds[-1]
            low += float(self.latency_table[s0: s0 + n0].min())
            high += float(self.latency_table[s1: s1 + n1].max())
        return low + float(self.other_latency_ms[0]), high + float(self.other_latency_ms[-1])


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


def run_tag(cfg: DictConfig) -> str:
    constraints = "+".join(f"{c:g}" for c in cfg.constraints_ms)
    return f"{cfg.hyperspace}_c{constraints}_t{cfg.t:g}_a{cfg.a:g}_seed{cfg.seed}"


def search(cfg: DictConfig) -> dict[str, Any]:
    """Aging evolution + CRN re-rank (or, with ``candidates``, only score those); writes JSON, markdown, PNG."""
    start = time.perf_counter()
    scorer = build_scorer(cfg)
    rng = np.random.default_rng(cfg.seed)
    out_dir = Path(cfg.output_dir) / run_tag(cfg)
    tracked = [_space_from_config(s, cfg.hyperspace) for s in cfg.tracked_spaces]
    result: dict[str, Any] = {"hyperspace": cfg.hyperspace, "tag": run_tag(cfg), "config": to_container(cfg),
                              "other_latency_ms": dict(zip(map(str, scorer.resolutions),
                                                           scorer.other_latency_ms.tolist()))}
    if cfg.candidates:
        spaces = [_space_from_config(s, cfg.hyperspace) for s in cfg.candidates]
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


@hydra_app("spaceevo", "space_search")
def main(cfg: DictConfig) -> None:
    result = search(cfg)
    print(render_report(result))
    print(f"outputs in {result['output_dir']}")


if __name__ == "__main__":
    main()
