"""The subcommands' architecture counts (moonlit.litepred.apps.settings): the README's fast debug command
composes, and bad counts are InputErrors."""

from __future__ import annotations

import pytest

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.litepred.apps.settings import DEFAULT_CALIBRATION_MODELS, calibration_count, training_specs


def _cfg(*overrides: str):
    return compose_config("litepred", "litepred", list(overrides))


@pytest.mark.parametrize("train, expected", [(150, 60), (60, 60), (12, 12), (1, 1)])
def test_default_calibration_count_is_at_most_the_training_architectures(train: int, expected: int) -> None:
    cfg = _cfg(f"architectures.train={train}")
    assert cfg.architectures.calibration is None and DEFAULT_CALIBRATION_MODELS == 60
    assert calibration_count(cfg) == expected == min(60, train)


def test_readme_debug_build_command_composes() -> None:
    # LitePred/README.md: moonlit-litepred build platform=debug budget.kernels=300 architectures.train=12
    cfg = _cfg("platform=debug", "budget.kernels=300", "architectures.train=12")
    assert calibration_count(cfg) == 12
    assert len(training_specs(cfg)) == 12


@pytest.mark.parametrize("overrides, message", [
    (["architectures.train=12", "architectures.calibration=60"], r"calibration \(60\) must not exceed .*train \(12\)"),
    (["architectures.calibration=-1"], "architectures.calibration = -1; expected null or an int >= 0"),
    (["architectures.train=0"], "architectures.train = 0; expected an int >= 1"),
])
def test_bad_counts_are_input_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        calibration_count(_cfg(*overrides))
