"""Latency backends: how a model becomes a zero-argument callable that runs one inference.

Part of the measurement protocol in :mod:`moonlit.common.profiling.latency`. A backend is a
factory ``(model, inputs, *, threads, **options) -> Runner`` registered by name, in the manner of
nn-Meter's backend plug-ins; LitePred adds its own (e.g. INT8 sessions) with
:func:`register_backend`. Built in: ``"torch"`` (eager, ``torch.inference_mode``, intra-op threads
pinned while timing and restored after) and ``"onnxruntime"`` (CPU session with
``intra_op_num_threads``, one inter-op thread, sequential execution, a chosen graph
optimization level).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "Runner", "BackendFactory", "register_backend", "get_backend", "available_backends",
    "make_runner", "pinned_torch_threads", "torch_runner", "onnxruntime_runner", "onnxruntime_session",
    "onnxruntime_session_options",
]


@dataclasses.dataclass
class Runner:
    """One inference as a zero-arg callable, plus what the protocol needs to know about it.

    ``torch_threads``: torch intra-op threads to pin while it runs (None: leave torch alone).
    ``context``: entered once around the whole timing loop (e.g. ``torch.inference_mode``).
    """

    fn: Callable[[], Any]
    backend: str = "callable"
    threads: int | None = None
    torch_threads: int | None = None
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def __call__(self) -> Any:
        return self.fn()


BackendFactory = Callable[..., Runner]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator registering ``factory(model, inputs, *, threads, **options) -> Runner`` as ``name``."""

    def decorator(factory: BackendFactory) -> BackendFactory:
        if name in _BACKENDS:
            raise ValueError(f"latency backend {name!r} is already registered")
        _BACKENDS[name] = factory
        return factory

    return decorator


def get_backend(name: str) -> BackendFactory:
    """The backend factory registered as ``name``."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown latency backend {name!r}; known backends: {available_backends()}")
    return _BACKENDS[name]


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def make_runner(backend: str, model: Any, inputs: Any, *, threads: int = 1, **options: Any) -> Runner:
    """Build a :class:`Runner` with the named backend."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    return get_backend(backend)(model, inputs, threads=threads, **options)


@contextlib.contextmanager
def pinned_torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block and restore the previous one after."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _torch_call_args(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    raise ValueError(f"inputs must be a tensor, a tuple/list or a dict, got {type(inputs).__name__}")


@register_backend("torch")
def torch_runner(model: nn.Module, inputs: Any, *, threads: int = 1) -> Runner:
    """Eager PyTorch under ``torch.inference_mode`` in eval mode (train mode restored after)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"the torch backend needs an nn.Module, got {type(model).__name__}")
    args, kwargs = _torch_call_args(inputs)

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        previous_modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:  # per-module restore: a model may mix train and eval submodules
            for module, training in previous_modes.items():
                module.training = training

    return Runner(lambda: model(*args, **kwargs), "torch", threads, threads, context)


_ORT_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def onnxruntime_session_options(*, threads: int = 1, optimization_level: str = "all") -> Any:
    """The ``onnxruntime.SessionOptions`` of the sessions the ``"onnxruntime"`` backend times:
    ``intra_op_num_threads=threads``, one inter-op thread, sequential execution, graph optimization
    ``optimization_level`` (one of "disable", "basic", "extended", "all"). A caller may add to them
    (profiling, a saved optimized model) and still run what is timed."""
    import onnxruntime as ort

    if optimization_level not in _ORT_OPTIMIZATION_LEVELS:
        raise ValueError(
            f"optimization_level must be one of {list(_ORT_OPTIMIZATION_LEVELS)}, got {optimization_level!r}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _ORT_OPTIMIZATION_LEVELS[optimization_level]
    )
    return options


def onnxruntime_session(model: str | Path | bytes | Any, *, threads: int = 1, optimization_level: str = "all") -> Any:
    """The CPU session the ``"onnxruntime"`` backend times, with :func:`onnxruntime_session_options`.

    ``model`` is an ``.onnx`` path, serialized bytes or an ``onnx.ModelProto``.
    """
    import onnxruntime as ort

    options = onnxruntime_session_options(threads=threads, optimization_level=optimization_level)
    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise FileNotFoundError(f"ONNX model not found: {model}")
        model = str(model)
    elif hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@register_backend("onnxruntime")
def onnxruntime_runner(
    model: str | Path | bytes | Any,
    inputs: Any,
    *,
    threads: int = 1,
    optimization_level: str = "all",
) -> Runner:
    """onnxruntime CPU session (:func:`onnxruntime_session`) running ``inputs``."""
    from moonlit.common.export.onnx import onnx_input_feed

    session = onnxruntime_session(model, threads=threads, optimization_level=optimization_level)
    feed = onnx_input_feed(session, inputs)
    return Runner(lambda: session.run(None, feed), "onnxruntime", threads)
