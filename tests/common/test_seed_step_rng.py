"""Per-step numpy generators (moonlit.common.train.seed.step_rng): the stream from its definition."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moonlit.common.train.seed import step_rng


def _by_hand(text: str) -> np.random.Generator:
    # SHA-256 of the text, first 8 bytes read little-endian, as the seed of numpy's default generator
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode("ascii")).digest()[:8], "little"))


def test_stream_is_the_documented_hash() -> None:
    assert np.array_equal(step_rng(0, 5).random(6), _by_hand("0:5").random(6))
    assert np.array_equal(step_rng(7, 123, rank=2).integers(0, 1000, 8), _by_hand("7:123:2").integers(0, 1000, 8))
    # (seed 0, step 5) and (seed 5, step 0) are different streams, and so are two ranks
    assert not np.array_equal(step_rng(0, 5).random(4), step_rng(5, 0).random(4))
    assert not np.array_equal(step_rng(1, 1, rank=0).random(4), step_rng(1, 1, rank=1).random(4))


def test_any_seed_and_step(fuzz_settings) -> None:
    @fuzz_settings
    @given(st.integers(0, 2**40), st.integers(0, 10**7), st.one_of(st.none(), st.integers(0, 64)))
    def check(seed: int, step: int, rank: int | None) -> None:
        text = f"{seed}:{step}" if rank is None else f"{seed}:{step}:{rank}"
        assert step_rng(seed, step, rank).bit_generator.state == _by_hand(text).bit_generator.state

    check()


@pytest.mark.parametrize(("seed", "step", "rank", "name"), [(-1, 0, None, "base_seed"), (0, -3, None, "step"),
                                                             (0, 1.5, None, "step"), (0, 0, -1, "rank"),
                                                             (True, 0, None, "base_seed")])
def test_bad_arguments_are_named(seed, step, rank, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a non-negative int"):
        step_rng(seed, step, rank)
