"""LitePred — transferable kernel-level latency prediction (NSDI'24).

A model's latency on a platform is predicted as the sum of its kernels' latencies, corrected by a
fitted overhead term. The pipeline as folders: ``zoo`` (training and held-out architectures),
``graph`` (ONNX → IR with static shapes), ``kernels`` (kernel detection, fusion rules as data in
``kernels/rules/*.yaml``), ``profile`` (kernel configurations to profile, platforms by name:
``ort-fp32``, ``ort-int8``, ``torch-fp32``, ``debug``, …, and the profiled records), ``predict``
(features, regressors, ``PlatformPredictor``, the overhead term, held-out evaluation, the parts
cache of NAS candidates), ``transfer`` (knowledge pool, similarity, adaptation methods, the
``adapt`` command and the transfer experiment); ``pipeline`` strings the steps together and
``cli`` is the ``moonlit-litepred`` CLI. See this folder's README.md.

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
