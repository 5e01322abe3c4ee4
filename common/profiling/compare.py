"""Exported models → runners → one interleaved comparison: the last step every quickstart and study shares.

An :class:`Arm` names a backend (``"torch"``, ``"onnxruntime"`` or any registered one), the model
(an ``nn.Module`` or an ``.onnx`` path) and the inputs one timed call runs, in order: one image,
or ToP's real batches one after the other. :func:`time_arms` builds every arm's runner with the
threads pinned and times them with :func:`moonlit.common.profiling.latency.compare_many`
(interleaved rounds, the first arm rotating; medians), so every caller keeps the same protocol:

    arms = {"ORT FP32": Arm("onnxruntime", "m.onnx", [image]), "ORT INT8": Arm("onnxruntime", "m.int8.onnx", [image])}
    comparison = time_arms(arms, threads=1, rounds=50, warmup=10, baseline="ORT FP32")
    median_ms(comparison)["ORT INT8"], comparison.ratio("ORT FP32", "ORT INT8").round_ratio_median
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from moonlit.common.profiling.backends import Runner, make_runner, onnxruntime_session
from moonlit.common.profiling.latency import MultiComparisonResult, compare_many, measure_latency

__all__ = ["Arm", "arm_runner", "median_ms", "time_arms"]


@dataclasses.dataclass
class Arm:
    """What one arm runs: ``backend`` on ``model``, one call = every entry of ``inputs`` in turn.

    ``options`` go to the backend (e.g. ``{"optimization_level": "all"}`` for onnxruntime).
    """

    backend: str
    model: Any
    inputs: Sequence[Any]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def arm_runner(arm: Arm, *, threads: int) -> Runner:
    """The :class:`Runner` of ``arm``: one inference per input, all inputs per call, one session/module."""
    inputs = list(arm.inputs) if isinstance(arm.inputs, Sequence) and not isinstance(arm.inputs, (str, bytes)) else None
    if not inputs:
        raise ValueError(f"an arm needs a non-empty sequence of inputs, got {arm.inputs!r:.80}")
    if len(inputs) == 1:
        return make_runner(arm.backend, arm.model, inputs[0], threads=threads, **arm.options)
    if arm.backend == "onnxruntime":  # one session for all inputs, not one per input
        from moonlit.common.export.onnx import onnx_input_feed

        session = onnxruntime_session(arm.model, threads=threads, **arm.options)
        feeds = [{name: np.ascontiguousarray(value) for name, value in onnx_input_feed(session, x).items()}
                 for x in inputs]
        return Runner(lambda: [session.run(None, feed) for feed in feeds], "onnxruntime", threads)
    runners = [make_runner(arm.backend, arm.model, x, threads=threads, **arm.options) for x in inputs]
    first = runners[0]
    return Runner(lambda: [runner.fn() for runner in runners], first.backend, first.threads, first.torch_threads,
                  first.context)


def time_arms(arms: Mapping[str, Arm | Runner], *, threads: int, rounds: int, warmup: int, burst: int = 1,
              baseline: str | None = None, seed: int = 0,
              clock: Callable[[], int] | None = None) -> MultiComparisonResult:
    """Build every arm's runner (``threads`` pinned) and time them interleaved; medians per arm.

    A ready :class:`Runner` is taken as it is. One arm alone is timed for ``rounds * max(1, burst - 1)``
    runs, the number of samples an arm gets in an interleaved run. ``baseline`` defaults to the first arm.
    """
    if not arms:
        raise ValueError("time_arms needs at least one arm")
    runners = {name: arm if isinstance(arm, Runner) else arm_runner(arm, threads=threads)
               for name, arm in arms.items()}
    if len(runners) > 1:
        return compare_many(runners, rounds=rounds, warmup=warmup, burst=burst, baseline=baseline, seed=seed,
                            clock=clock)
    ((name, runner),) = runners.items()
    if baseline not in (None, name):
        raise ValueError(f"baseline {baseline!r} is not one of the arms {[name]}")
    result = measure_latency(runner, warmup=warmup, runs=rounds * max(1, burst - 1), clock=clock)
    return MultiComparisonResult({name: result}, rounds, warmup, name, result.environment, seed=seed)


def median_ms(comparison: MultiComparisonResult) -> dict[str, float]:
    """``{arm: median latency in ms}`` in the arms' order."""
    return {name: result.median_ms for name, result in comparison.results.items()}
