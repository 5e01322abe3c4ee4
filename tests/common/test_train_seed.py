"""Tests for moonlit.common.train.seed: global seeding, RNG state capture, per-step generators."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import torch

from moonlit.common.train.seed import get_rng_state, seed_everything, set_rng_state, step_generator, step_seed


@pytest.fixture(autouse=True)
def _restore_torch_flags():
    deterministic = torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    state = get_rng_state()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    set_rng_state(state)


def _draw() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_seed_everything_reseeds_all_three_libraries() -> None:
    seed_everything(11)
    first = _draw()
    seed_everything(11)
    second = _draw()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
    # each library's own seeding gives the same first draw
    assert first[0] == random.Random(11).random()
    assert first[1] == np.random.RandomState(11).rand()
    assert torch.equal(first[2], torch.rand(3, generator=torch.Generator().manual_seed(11)))
    seed_everything(12)
    assert _draw()[0] != first[0]


def test_seed_everything_deterministic_flag() -> None:
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True, "3"])
def test_seed_everything_rejects_bad_seeds(bad) -> None:
    with pytest.raises(ValueError, match="seed must be an int"):
        seed_everything(bad)


def test_step_seed_is_the_documented_sha256() -> None:
    def expected(text: str) -> int:
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")

    assert step_seed(42, 7) == expected("42:7")
    assert step_seed(42, 7, rank=3) == expected("42:7:3")
    assert step_seed(0, 5) != step_seed(5, 0)  # the collision a plain sum would have
    assert len({step_seed(1, s) for s in range(1000)}) == 1000
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        step_seed(1, -2)


def test_step_generator_agrees_across_ranks_and_differs_across_steps() -> None:
    a = step_generator(3, 10)
    b = step_generator(3, 10)
    assert a.initial_seed() == step_seed(3, 10)
    assert torch.equal(torch.randperm(50, generator=a), torch.randperm(50, generator=b))
    assert not torch.equal(torch.randperm(50, generator=step_generator(3, 10)),
                           torch.randperm(50, generator=step_generator(3, 11)))
    rank0 = step_generator(3, 10, rank_independent=False, rank=0)
    rank1 = step_generator(3, 10, rank_independent=False, rank=1)
    assert rank0.initial_seed() == step_seed(3, 10, 0) != rank1.initial_seed()
    with pytest.raises(ValueError, match="rank_independent"):
        step_generator(3, 10, rank=1)


def test_rng_state_round_trip() -> None:
    state = get_rng_state()
    first = _draw()
    set_rng_state(state)
    second = _draw()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
    with pytest.raises(ValueError, match="lacks"):
        set_rng_state({"python": state["python"]})
