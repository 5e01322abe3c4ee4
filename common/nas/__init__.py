"""Neural architecture search shared by SpaceEvo and ElasticViT: constrained evolution, hardware constraints."""

from .constraints import (
    AllConstraints,
    BandConstraint,
    Constraint,
    ConstraintCheck,
    MacsConstraint,
    PredicateConstraint,
    as_constraint,
)
from .evolution import (
    ConstraintUnsatisfiable,
    EvolutionConfig,
    EvolutionSearch,
    GenerationLog,
    Record,
    SearchProblem,
)
from .latency import LatencyConstraint
from .pareto import pareto_front, pareto_indices, plot_search
from .ranking import RankedSubnet, RankingFidelity, kendall_tau, ranking_fidelity, spread_by_complexity

__all__ = ["AllConstraints", "BandConstraint", "Constraint", "ConstraintCheck", "ConstraintUnsatisfiable",
           "EvolutionConfig", "EvolutionSearch", "GenerationLog", "LatencyConstraint", "MacsConstraint",
           "PredicateConstraint", "RankedSubnet", "RankingFidelity", "Record", "SearchProblem", "as_constraint",
           "kendall_tau", "pareto_front", "pareto_indices", "plot_search", "ranking_fidelity", "spread_by_complexity"]
