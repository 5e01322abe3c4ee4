"""LitePred — transferable kernel-level latency prediction (NSDI'24).

A model's latency on a platform is predicted as the sum of its kernels' latencies, corrected by a
fitted overhead term. The pipeline as modules: ``graph`` (ONNX → IR with static shapes),
``kernels`` and ``fusion*`` with ``rules/*.yaml`` (kernel detection, fusion rules as data),
``features``, ``kernel_builder`` and ``sampler`` (kernel configurations to profile), ``zoo*``
(training and held-out architectures), ``profile`` (backends by name: ``ort-fp32``, ``ort-int8``,
``torch-fp32``, ``debug``, …), ``regressors``/``forest``/``mlp`` and ``predictor``
(``PlatformPredictor``), ``calibration`` (overhead term, weight-read floor), ``evaluate`` (held-out
accuracy beside the measurement ceiling), transfer to a new platform (``pool``, ``similarity``,
``vae``, ``transfer``, ``adapt``, ``transfer_experiment``), ``nas`` (kernel rows of NAS candidates
from cached parts), and the ``moonlit-litepred`` CLI (``cli``). See this folder's README.md.

Other packages use LitePred only through :mod:`moonlit.litepred.api` (re-exported here, loaded on
first use so ``import moonlit.litepred`` stays light) and, in their tests, :mod:`moonlit.litepred.testing`.
"""

from __future__ import annotations

from typing import Any

_API = frozenset({
    "ArchFamily", "ArchSpec", "ModelPart", "PartCache", "PartsLatency", "Prediction", "Predictor", "load_predictor",
    "measure_like_predictor", "predict_module", "predict_onnx", "protocol_summary", "register_family",
})


def __getattr__(name: str) -> Any:
    # PEP 562: the API's modules (torch, onnx, the zoo) load when a name is first used
    if name in _API:
        from moonlit.litepred import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
