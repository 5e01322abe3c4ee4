"""Fixtures shared by the ElasticViT tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def make_stand_in_predictor() -> Callable[..., object]:
    """Build a stand-in LitePred predictor without profiling anything, saved to ``root/predictor``.

    ``make(root, seed=0, kernel_ms=0.01, ms_per_unit=1e-9)`` returns
    :func:`moonlit.litepred.testing.stand_in_predictor` for every kernel type under the ``ort-fp32``
    platform: a kernel costs ``kernel_ms`` plus ``ms_per_unit`` times a seeded weighted sum of its
    features (so larger kernels are slower). Latency-constrained search tests need a predictor whose
    answer they can recompute; what it predicts does not have to be a real machine's latency.
    """
    from moonlit.litepred.testing import stand_in_predictor

    def make(root: Path, *, seed: int = 0, kernel_ms: float = 0.01, ms_per_unit: float = 1e-9) -> object:
        predictor = stand_in_predictor(seed=seed, platform={"name": "ort-fp32"}, kernel_ms=kernel_ms,
                                       ms_per_unit=ms_per_unit)
        predictor.save(Path(root) / "predictor")
        return predictor

    return make
