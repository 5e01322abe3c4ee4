"""The elastic-op contract of weight-sharing supernets (once-for-all, Cai et al. ICLR'20, Sec. 3.2).

An elastic op holds its parameters at the largest size. Its active choice lives in ``active_*``
attributes, set by the keyword-only ``set_active(**choices)``; ``forward`` slices the parameters
by that choice (input channels follow the input); ``get_active_subnet(in_channels)`` returns a
plain static ``nn.Module`` with copies of the active slices whose output equals the op's for an
input of ``in_channels`` channels (``None``: the op's largest input width).

One vocabulary across papers: ``active_out_channels``, ``active_kernel_size``,
``active_expand_ratio``, ``active_depth``, ``active_mlp_ratio``, ``active_v_scale`` and
``active_resolution``. :meth:`ElasticModule.active_config` reads the ones a class declares in
``active_choices``.

:class:`ElasticBatchNorm2d` is the elastic BatchNorm both supernets use: it normalises the leading
C channels of an input with C channels, with the first C entries of its statistics and affine
parameters, and also covers ``affine=False`` and ``track_running_stats=False``.

:class:`ElasticSupernet` is the network-level side: ``set_active(subnet)``, ``active_subnet``,
``sample_active(rng)``, ``set_max()``, ``set_min()`` and ``get_active_subnet()``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from moonlit.common.errors import InputError

__all__ = ["ElasticBatchNorm2d", "ElasticModule", "ElasticSupernet", "check_no_choices", "check_width",
           "copy_batch_norm_slice", "elastic_batch_norm"]


def check_width(channels: int, max_channels: int, what: str) -> None:
    """Raise :class:`InputError` unless ``0 < channels <= max_channels``."""
    if not 0 < channels <= max_channels:
        raise InputError(f"{what}: {channels} channels requested, expected 1..{max_channels}")


class ElasticModule(nn.Module, abc.ABC):
    """Base of every elastic op: max-size parameters, ``active_*`` state, a static extract."""

    #: The names ``x`` of this class's ``active_x`` attributes, in the order ``active_config`` lists them.
    active_choices: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def set_active(self, **choices: Any) -> None:
        """Select a sub-op; each keyword names an ``active_*`` attribute; ``None`` keeps the current value."""

    def active_config(self) -> dict[str, Any]:
        """The active choice as ``{name: value}`` (for logs and checkpoints' JSON)."""
        return {name: getattr(self, f"active_{name}") for name in self.active_choices}

    @abc.abstractmethod
    def get_active_subnet(self, in_channels: int | None = None) -> nn.Module:
        """A static copy of the active sub-op for inputs of ``in_channels`` channels (``None``: the largest)."""


def check_no_choices(module: nn.Module, choices: dict[str, Any]) -> None:
    """``set_active`` of an op whose only elastic dimension is its input width."""
    if choices:
        raise InputError(f"{type(module).__name__} has no choices (its width is the input's), got {sorted(choices)}")


class ElasticSupernet(nn.Module, abc.ABC):
    """A whole weight-sharing network: one subnet (a space's encoding object) is active at a time."""

    @abc.abstractmethod
    def set_active(self, subnet: Any) -> None:
        """Activate ``subnet``; a subnet outside the space raises ``InputError`` and changes nothing."""

    @property
    @abc.abstractmethod
    def active_subnet(self) -> Any:
        """The active subnet, as the space's encoding object."""

    @abc.abstractmethod
    def sample_active(self, rng: np.random.Generator) -> Any:
        """Activate and return a uniformly random subnet drawn from ``rng`` (the space's ``sample_subnet``)."""

    @abc.abstractmethod
    def set_max(self) -> Any:
        """Activate and return the largest subnet."""

    @abc.abstractmethod
    def set_min(self) -> Any:
        """Activate and return the smallest subnet."""

    @abc.abstractmethod
    def get_active_subnet(self) -> nn.Module:
        """A static copy of the active subnet whose output equals the supernet's."""


def elastic_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, channels: int, what: str) -> Tensor:
    """``bn`` applied to the leading ``channels`` of its statistics and affine parameters.

    The running buffers are sliced views, so in training the shared statistics update in place;
    ``momentum=None`` is the cumulative moving average, as in ``nn.BatchNorm2d``.
    """
    check_width(channels, bn.num_features, what)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or bn.running_mean is None
    return F.batch_norm(
        x,
        None if bn.running_mean is None else bn.running_mean[:channels],
        None if bn.running_var is None else bn.running_var[:channels],
        None if bn.weight is None else bn.weight[:channels],
        None if bn.bias is None else bn.bias[:channels],
        use_batch_stats, momentum, bn.eps,
    )


def copy_batch_norm_slice(source: nn.modules.batchnorm._BatchNorm, target: nn.modules.batchnorm._BatchNorm,
                          channels: int) -> None:
    """Load the leading ``channels`` of ``source``'s parameters and buffers into ``target`` (same flags)."""
    state = {name: value[:channels] if value.dim() == 1 else value for name, value in source.state_dict().items()}
    target.load_state_dict(state)


class ElasticBatchNorm2d(nn.BatchNorm2d, ElasticModule):
    """BatchNorm2d at max width; the active width is the input's channel count."""

    def set_active(self, **choices: Any) -> None:
        check_no_choices(self, choices)

    def forward(self, x: Tensor) -> Tensor:
        return elastic_batch_norm(self, x, x.shape[1], "ElasticBatchNorm2d")

    def get_active_subnet(self, in_channels: int | None = None) -> nn.BatchNorm2d:
        channels = self.num_features if in_channels is None else in_channels
        check_width(channels, self.num_features, "ElasticBatchNorm2d")
        static = nn.BatchNorm2d(channels, self.eps, self.momentum, self.affine, self.track_running_stats)
        copy_batch_norm_slice(self, static, channels)
        return static
