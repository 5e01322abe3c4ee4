"""Hardware constraints of a subnet search (SpaceEvo, ICCV'23, Sec. 4 "subnet search"; ElasticViT, ICCV'23,
Sec. 3.4 "evolutionary search").

A constraint answers, for a *batch* of candidates, which ones may be evaluated, and reports the
measured quantity (MACs, predicted latency) so that the search can keep it as a Pareto objective
without computing it twice. SpaceEvo keeps a subnet when its predicted latency lies in the band
``[c − δ, c]``; ElasticViT keeps it under a FLOPs limit. Both are a :class:`BandConstraint` on
one measured value; a plain predicate ``candidate -> bool`` is wrapped by :class:`PredicateConstraint`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["AllConstraints", "BandConstraint", "Constraint", "ConstraintCheck", "MacsConstraint",
           "PredicateConstraint", "as_constraint"]

C = TypeVar("C")


@dataclass(frozen=True)
class ConstraintCheck:
    """Result of checking a batch: which candidates pass, and the measured values by metric name."""

    feasible: np.ndarray                                      # bool, one per candidate
    values: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> one float per candidate


class Constraint(abc.ABC, Generic[C]):
    """Something that says which candidates of a batch are allowed; ``description`` appears in errors."""

    description: str = "constraint"

    @abc.abstractmethod
    def check(self, candidates: Sequence[C]) -> ConstraintCheck:
        """Feasibility (and measured values) of each candidate, computed in one batch."""

    def __call__(self, candidates: Sequence[C]) -> np.ndarray:
        return self.check(candidates).feasible

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def _as_bool_vector(result: Any, n: int, description: str) -> np.ndarray:
    feasible = np.asarray(result)
    if feasible.shape != (n,):
        raise ValueError(f"constraint {description!r} returned shape {feasible.shape} for {n} candidates; "
                         f"expected ({n},) booleans")
    if feasible.dtype != np.bool_:
        if not np.all(np.isin(feasible, (0, 1))):
            raise ValueError(f"constraint {description!r} returned non-boolean values {feasible[:5].tolist()}...")
        feasible = feasible.astype(bool)
    return feasible


class PredicateConstraint(Constraint[C]):
    """A user predicate: ``predicate(candidate) -> bool``, or ``predicate(batch) -> bools`` when ``batched``."""

    def __init__(self, predicate: Callable[[Any], Any], description: str | None = None,
                 batched: bool = False) -> None:
        self.predicate = predicate
        self.batched = batched
        self.description = description or getattr(predicate, "__name__", repr(predicate))

    def check(self, candidates: Sequence[C]) -> ConstraintCheck:
        if self.batched:
            result = self.predicate(list(candidates))
        else:
            result = [bool(self.predicate(c)) for c in candidates]
        return ConstraintCheck(_as_bool_vector(result, len(candidates), self.description))


class BandConstraint(Constraint[C]):
    """``lower <= measure(candidate) <= upper`` for one measured value named ``metric``.

    ``measure`` takes the whole batch and returns one finite float per candidate.
    """

    def __init__(self, measure: Callable[[Sequence[C]], Any], metric: str, upper: float,
                 lower: float = -math.inf, unit: str = "") -> None:
        if not math.isfinite(upper):
            raise ValueError(f"upper bound {upper} of {metric!r} is not finite; expected a number")
        if lower > upper:
            raise ValueError(f"band [{lower}, {upper}] of {metric!r} is empty; expected lower <= upper")
        self.measure = measure
        self.metric = metric
        self.upper = float(upper)
        self.lower = float(lower)
        self.unit = unit
        low = "-inf" if math.isinf(self.lower) else f"{self.lower:g}"
        self.description = f"{metric} in [{low}, {self.upper:g}]{' ' + unit if unit else ''}"

    def values(self, candidates: Sequence[C]) -> np.ndarray:
        """The measured value of each candidate (float64, finite)."""
        values = np.asarray(self.measure(list(candidates)), dtype=np.float64)
        if values.shape != (len(candidates),):
            raise ValueError(f"{self.metric} of {len(candidates)} candidates came back with shape {values.shape}; "
                             f"expected ({len(candidates)},)")
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"{self.metric} of candidate {bad} in the batch is {values[bad]}; "
                             "expected a finite number")
        return values

    def check(self, candidates: Sequence[C]) -> ConstraintCheck:
        if not candidates:
            return ConstraintCheck(np.zeros(0, dtype=bool), {self.metric: np.zeros(0)})
        values = self.values(candidates)
        return ConstraintCheck((values >= self.lower) & (values <= self.upper), {self.metric: values})


class MacsConstraint(BandConstraint[C]):
    """MACs of a candidate (``macs(candidate) -> float``, e.g. an exact counter) in ``[min_macs, max_macs]``.

    ElasticViT searches under a FLOPs limit (``max_macs``); a lower bound keeps the search near the
    limit, as the reference's ``min_flops_limits`` does.
    """

    def __init__(self, macs: Callable[[C], float], max_macs: float, min_macs: float = 0.0,
                 metric: str = "macs") -> None:
        if max_macs <= 0:
            raise ValueError(f"max_macs = {max_macs}; expected > 0")
        self.macs = macs
        super().__init__(lambda batch: [float(macs(c)) for c in batch], metric, max_macs, min_macs)


class AllConstraints(Constraint[C]):
    """Every one of ``constraints`` holds (e.g. a predicted-latency band under a MACs budget).

    Each constraint checks only the candidates all earlier ones passed, so an expensive one (a
    latency predictor) goes last; values it did not compute are NaN. ``metric`` (the search's
    objective beside fitness) defaults to the last constraint's.
    """

    def __init__(self, *constraints: Constraint[C], metric: str | None = None) -> None:
        if not constraints:
            raise ValueError("AllConstraints needs at least one constraint")
        self.constraints = constraints
        self.metric = metric or getattr(constraints[-1], "metric", "value")
        self.description = " and ".join(c.description for c in constraints)

    def check(self, candidates: Sequence[C]) -> ConstraintCheck:
        n = len(candidates)
        feasible = np.ones(n, dtype=bool)
        values: dict[str, np.ndarray] = {}
        for constraint in self.constraints:
            index = np.flatnonzero(feasible)
            result = constraint.check([candidates[i] for i in index])
            feasible[index] = _as_bool_vector(result.feasible, len(index), constraint.description)
            for metric, got in result.values.items():
                values.setdefault(metric, np.full(n, np.nan))[index] = got
        return ConstraintCheck(feasible, values)


def as_constraint(constraint: Constraint[C] | Callable[[C], Any] | None) -> Constraint[C] | None:
    """A :class:`Constraint` as is; a per-candidate predicate wrapped; ``None`` (no constraint) kept."""
    if constraint is None or isinstance(constraint, Constraint):
        return constraint
    if callable(constraint):
        return PredicateConstraint(constraint)
    raise TypeError(f"constraint {constraint!r} is neither a Constraint nor a callable candidate -> bool")
