"""Warm-up + cosine lr factors (moonlit.common.train.schedules): each style against its hand formula.

The expected values are written out here from the formulas (and, at chosen steps, as decimals worked
by hand); the ``old_*`` functions are the three recipes as their callers wrote them before they
shared this module, kept here as a second implementation, compared bit for bit.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moonlit.common.train.schedules import warmup_cosine


def old_classifier(w: int, t: int, s: int) -> float:  # common/train/classifier.py's _warmup_cosine
    if s < w:
        return (s + 1) / w
    progress = (s - w) / max(1, t - w)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def old_spaceevo(w: int, t: int, f: float, s: int) -> float:  # SpaceEvo/train_supernet.py's warmup_cosine
    warm = 1.0
    if s < w:
        progress = s / w
        warm = f * (1.0 - progress) + progress
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(s, t) / t))


def old_elasticvit(w: int, c: int, rw: float, rmin: float, s: int) -> float:  # ElasticViT/train_step.py's
    if s < w:
        return rw + (1.0 - rw) * s / w
    progress = min(s, c) / c
    return rmin + (1.0 - rmin) * 0.5 * (1.0 + math.cos(math.pi * progress))


def test_after_warmup_by_hand() -> None:
    factor = warmup_cosine(4, 12, style="after_warmup")
    # ramp (s + 1) / 4, then the cosine over the 8 steps after the warm-up, ending at 0
    expected = {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 6: 0.5 * (1 + math.cos(math.pi / 4)), 8: 0.5, 12: 0.0, 20: 0.0}
    for step, value in expected.items():
        assert factor(step) == pytest.approx(value, abs=1e-15), step
    assert factor(6) == pytest.approx(0.8535533905932737)  # 0.5 (1 + sqrt(2) / 2)
    floored = warmup_cosine(4, 12, style="after_warmup", min_ratio=0.1)
    assert floored(8) == pytest.approx(0.1 + 0.9 * 0.5) and floored(12) == pytest.approx(0.1)
    assert floored(2) == 0.75  # the floor does not touch the ramp


def test_multiply_by_hand() -> None:
    factor = warmup_cosine(10, 100, style="multiply", warmup_start=0.001)
    assert factor(0) == pytest.approx(0.001)  # cos(0) = 1
    # step 5: halfway up the ramp (0.001 * 0.5 + 0.5 = 0.5005) times the cosine at 5 / 100
    assert factor(5) == pytest.approx(0.5005 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert factor(5) == pytest.approx(0.49741901, rel=1e-7)  # cos(9 deg) = 0.98768834
    assert factor(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))  # ramp done: the plain cosine
    assert factor(50) == pytest.approx(0.5) and factor(100) == pytest.approx(0.0) and factor(150) == pytest.approx(0.0)
    assert warmup_cosine(0, 4, style="multiply", warmup_start=0.001)(0) == 1.0


def test_timm_by_hand() -> None:
    factor = warmup_cosine(5, 20, style="timm", warmup_start=0.1, min_ratio=0.01)
    assert factor(0) == 0.1 and factor(4) == pytest.approx(0.1 + 0.9 * 4 / 5)  # 0.82
    # at the end of the warm-up the cosine is already at 5 / 20 (counted from step 0): the factor drops
    assert factor(5) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert factor(5) < factor(4) + 0.1 and factor(5) == pytest.approx(0.8550178566873410)
    assert factor(10) == pytest.approx(0.505)
    assert factor(20) == pytest.approx(0.01) and factor(35) == pytest.approx(0.01)  # the cool-down stays at the floor


@pytest.mark.parametrize(("warmup", "total"), [(0, 1), (0, 7), (1, 1), (3, 10), (10, 4), (25, 1000)])
def test_each_caller_keeps_its_numbers_bit_for_bit(warmup: int, total: int) -> None:
    classifier = warmup_cosine(warmup, total, style="after_warmup")
    spaceevo = warmup_cosine(warmup, total, style="multiply", warmup_start=0.001)
    elasticvit = warmup_cosine(warmup, total, style="timm", warmup_start=1e-6 / 5e-4, min_ratio=5e-6 / 5e-4)
    for step in range(total + warmup + 5):
        assert classifier(step) == old_classifier(warmup, total, step), step
        assert spaceevo(step) == old_spaceevo(warmup, total, 0.001, step), step
        assert elasticvit(step) == old_elasticvit(warmup, total, 1e-6 / 5e-4, 5e-6 / 5e-4, step), step


def test_styles_agree_with_the_old_recipes_everywhere(fuzz_settings) -> None:
    @fuzz_settings
    @given(st.integers(0, 50), st.integers(1, 200), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(0, 300))
    def check(warmup: int, total: int, start: float, floor: float, step: int) -> None:
        assert warmup_cosine(warmup, total, style="after_warmup")(step) == old_classifier(warmup, total, step)
        assert warmup_cosine(warmup, total, style="multiply", warmup_start=start)(step) == \
            old_spaceevo(warmup, total, start, step)
        assert warmup_cosine(warmup, total, style="timm", warmup_start=start, min_ratio=floor)(step) == \
            old_elasticvit(warmup, total, start, floor, step)

    check()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"style": "linear"}, "style 'linear' is not one of"),
    ({"style": "multiply"}, "needs warmup_start"),
    ({"style": "timm"}, "needs warmup_start"),
    ({"style": "after_warmup", "warmup_start": 0.1}, "ramps from 1 / warmup_steps"),
    ({"style": "multiply", "warmup_start": 0.1, "min_ratio": 0.1}, "decays to 0"),
    ({"style": "timm", "warmup_start": 0.1, "min_ratio": 1.5}, r"min_ratio must be in \[0, 1\]"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        warmup_cosine(2, 10, **kwargs)


@pytest.mark.parametrize(("warmup", "total", "match"), [(0, 0, "total_steps"), (-1, 5, "warmup_steps"),
                                                        (1.5, 5, "warmup_steps"), (1, True, "total_steps")])
def test_bad_step_counts(warmup, total, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        warmup_cosine(warmup, total, style="after_warmup")
