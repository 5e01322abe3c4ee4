"""moonlit.common.profiling.compare: arms built from (backend, model, inputs), timed interleaved.

A recording backend and a virtual clock stand in for real models: each call advances the clock by a
duration written out below, so the interleaving order and the medians are checked against hand values.
"""

from __future__ import annotations

import pytest
import torch

from moonlit.common.profiling.backends import Runner, available_backends, register_backend
from moonlit.common.profiling.compare import Arm, arm_runner, median_ms, time_arms

CALLS: list[tuple[str, object]] = []
NOW = [0]
# ns each call of an arm takes, in the order that arm is called (warm-up call first)
DURATIONS: dict[str, list[int]] = {}

if "test-recording" not in available_backends():
    @register_backend("test-recording")
    def _recording(model: str, inputs: object, *, threads: int = 1, **options: object) -> Runner:
        def run() -> None:
            CALLS.append((model, inputs))
            if inputs == "last" or inputs == "only":  # one arm call ends at its last input
                NOW[0] += DURATIONS[model].pop(0)

        return Runner(run, "test-recording", threads)


def clock() -> int:
    return NOW[0]


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    NOW[0] = 0
    DURATIONS.clear()


def test_interleaving_order_inputs_in_turn_and_medians() -> None:
    # 1 warm-up round + 3 rounds, the first arm rotating: ABC, BCA, CAB, ABC
    DURATIONS.update(A=[99, 4_000_000, 1_000_000, 3_000_000],
                     B=[99, 2_000_000, 8_000_000, 5_000_000],
                     C=[99, 6_000_000, 6_000_000, 9_000_000])
    arms = {name: Arm("test-recording", name, ["first", "last"]) for name in "ABC"}
    comparison = time_arms(arms, threads=1, rounds=3, warmup=1, baseline="B", clock=clock)
    order = [model for model, inputs in CALLS if inputs == "first"]
    assert order == list("ABC" "BCA" "CAB" "ABC")
    assert [inputs for _, inputs in CALLS] == ["first", "last"] * 12
    # samples after warm-up: A 4,1,3 ms; B 2,8,5 ms; C 6,6,9 ms
    assert comparison.results["A"].samples_ms == [4.0, 1.0, 3.0]
    assert median_ms(comparison) == {"A": 3.0, "B": 5.0, "C": 6.0}
    assert comparison.baseline == "B"
    # per-round ratios A/C: 4/6, 1/6, 3/9 -> median 1/3
    assert comparison.ratio("A", "C").round_ratio_median == pytest.approx(1 / 3)


def test_burst_keeps_all_but_the_first_call_of_each_burst() -> None:
    DURATIONS.update(A=[7, 7, 7, 7, 2_000_000, 1_000_000, 7, 4_000_000, 6_000_000],
                     B=[7, 7, 7, 7, 3_000_000, 5_000_000, 7, 1_000_000, 1_000_000])
    arms = {name: Arm("test-recording", name, ["only"]) for name in "AB"}
    comparison = time_arms(arms, threads=1, rounds=2, warmup=1, burst=3, clock=clock)
    assert "".join(model for model, _ in CALLS) == "AAA" "BBB" + "BBB" "AAA" + "AAA" "BBB"
    # round 1 (B first): B keeps 3, 5 and A keeps 2, 1; round 2: A keeps 4, 6 and B keeps 1, 1
    assert comparison.results["B"].samples_ms == [3.0, 5.0, 1.0, 1.0]
    assert median_ms(comparison) == {"A": 3.0, "B": 2.0}


def test_one_arm_alone_gets_the_interleaved_sample_count() -> None:
    DURATIONS["A"] = [5] * 2 + [3_000_000, 1_000_000, 2_000_000, 8_000_000]
    comparison = time_arms({"A": Arm("test-recording", "A", ["only"])}, threads=1, rounds=2, warmup=2, burst=3,
                           clock=clock)
    assert len(CALLS) == 6
    assert comparison.results["A"].median_ms == 2.5
    assert comparison.baseline == "A"


def test_ready_runner_and_thread_pinning() -> None:
    model = torch.nn.Linear(3, 2)
    seen: list[int] = []
    arms = {"torch": Arm("torch", model, [torch.zeros(1, 3), torch.ones(2, 3)]),
            "spy": Runner(lambda: seen.append(torch.get_num_threads()), threads=1, torch_threads=1)}
    comparison = time_arms(arms, threads=1, rounds=3, warmup=1)
    assert seen == [1, 1, 1, 1]
    assert comparison.results["torch"].threads == 1 and comparison.results["torch"].runs == 3


def test_onnxruntime_arm_runs_every_input_in_one_session(tmp_path) -> None:
    from moonlit.common.export.onnx import export_onnx

    model = torch.nn.Linear(3, 2).eval()
    batches = [torch.zeros(1, 3), torch.ones(4, 3)]
    path = export_onnx(model, (batches[0],), tmp_path / "linear.onnx",
                       dynamic_axes={"input": {0: "batch"}}, input_names=["input"])
    outputs = arm_runner(Arm("onnxruntime", path, batches), threads=1)()
    assert [out[0].shape for out in outputs] == [(1, 2), (4, 2)]
    expected = model(batches[1]).detach().numpy()
    assert outputs[1][0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("inputs", [[], "abc", None])
def test_bad_inputs_and_baseline(inputs: object) -> None:
    with pytest.raises(ValueError, match="inputs"):
        arm_runner(Arm("test-recording", "A", inputs), threads=1)  # type: ignore[arg-type]


def test_unknown_baseline_and_no_arms() -> None:
    with pytest.raises(ValueError, match="baseline"):
        time_arms({"A": Arm("test-recording", "A", ["only"])}, threads=1, rounds=1, warmup=0, baseline="B")
    with pytest.raises(ValueError, match="at least one arm"):
        time_arms({}, threads=1, rounds=1, warmup=0)
