"""Which kernels to profile on a new platform: a VAE over real kernel configurations (LitePred, NSDI'24, Sec. 5.2).

With a budget of a few hundred kernels, *which* kernels are profiled decides how well the adapted
predictor covers the models it will be asked about. LitePred trains a variational auto-encoder on
the configurations that occur in real search spaces and samples from it: new configurations that
follow the joint distribution of the real ones (channels grow with depth while resolution
shrinks, kernel sizes go with depthwise convs, ...) without being copies of them. The reference
does this for depthwise convolutions only; :class:`KernelConfigVAE` is fitted per kernel type.

A configuration's numeric dimensions are the type's channel groups, spatial groups and (for
convolutions) kernel size (the parameter tables of :mod:`.sampler`), as log2 values standardized
per type. A decoded vector is made a real kernel by taking the nearest real configuration as a
template (its categorical parameters: activation, stride, padding mode, ...), setting channels to
multiples of 8 and spatial/kernel sizes to the nearest value seen for the type, and recomputing
output sizes (:func:`.sampler.realize`).

:func:`sample_configs_vae` and :func:`sample_configs_uniform` spend the same per-type quotas (by
frequency, as :func:`.sampler.sample_configs`); uniform draws each dimension independently and
uniformly over the range seen for the type — the baseline of the paper's sampler ablation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from moonlit.litepred.kernels.detect import KernelConfig
from moonlit.litepred.predict.features import kernel_macs
from moonlit.litepred.profile.sampler import (
    _CHANNELS,
    _CONV_LIKE,
    _REAL_ONLY,
    _SPATIAL,
    KernelPool,
    _quotas,
    _seen_values,
    realize,
)

__all__ = ["KernelConfigVAE", "numeric_dimensions", "sample_configs_uniform", "sample_configs_vae"]

logger = logging.getLogger(__name__)


def numeric_dimensions(kernel_type: str) -> list[tuple[str, tuple[str, ...]]]:
    """``[(role, parameter group)]`` a VAE models for ``kernel_type``; roles: channels, spatial, kernel."""
    dims = [("channels", g) for g in _CHANNELS.get(kernel_type, ())]
    dims += [("spatial", g) for g in _SPATIAL.get(kernel_type, ())]
    if kernel_type in _CONV_LIKE:
        dims.append(("kernel", ("kh", "kw")))
    return dims


def _vector(config: KernelConfig, dims: Sequence[tuple[str, tuple[str, ...]]]) -> np.ndarray:
    return np.log2(np.array([max(1, int(config.params[g[0]])) for _, g in dims], dtype=np.float64))


def _nearest(values: Sequence[int], target: float) -> int:
    values = np.asarray(values)
    return int(values[np.argmin(np.abs(np.log2(values) - math.log2(max(target, 1e-9))))])


def _with_values(template: KernelConfig, dims: Sequence[tuple[str, tuple[str, ...]]], values: Sequence[float],
                 seen: dict[str, list[int]]) -> KernelConfig | None:
    """``template`` with each dimension set to ``values`` (linear scale), snapped to valid sizes."""
    params: dict[str, Any] = dict(template.params)
    for (role, group), value in zip(dims, values):
        if role == "channels":
            multiple = 8 if int(template.params[group[0]]) % 8 == 0 else 1
            snapped = max(multiple, int(round(value / multiple)) * multiple)
        else:
            snapped = _nearest(seen.get(group[0]) or [int(template.params[group[0]])], value)
        if role == "kernel" and params["kh"] == params["kw"]:
            same = params["ph"] == (params["kh"] - 1) // 2 * params["dh"]
            if same:
                params["ph"] = params["pw"] = (snapped - 1) // 2 * params["dh"]
        elif role == "kernel":
            continue  # non-square kernels keep the template's
        for name in group:
            params[name] = snapped
    candidate = realize(template, params)
    return template if candidate is None and params == dict(template.params) else candidate


class KernelConfigVAE:
    """A small VAE (MLP encoder/decoder, Gaussian latent) over one kernel type's numeric dimensions."""

    def __init__(self, kernel_type: str, latent: int = 4, hidden: int = 64, beta: float = 0.5, seed: int = 0):
        self.kernel_type, self.latent, self.hidden, self.beta, self.seed = kernel_type, latent, hidden, beta, seed
        self.dims = numeric_dimensions(kernel_type)
        if not self.dims:
            raise ValueError(f"kernel type {kernel_type!r} has no numeric dimensions to model; "
                             f"types profiled as seen: {sorted(_REAL_ONLY)}")
        self.net: Any = None

    def fit(self, configs: Sequence[KernelConfig], counts: Sequence[int], epochs: int = 300,
            lr: float = 3e-3) -> KernelConfigVAE:
        """Train on real configs, each weighted by how often it occurs (frequency-weighted batches)."""
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        X = np.stack([_vector(c, self.dims) for c in configs])
        self.mean, self.std = X.mean(0), np.where(X.std(0) > 1e-9, X.std(0), 1.0)
        Z = torch.from_numpy(((X - self.mean) / self.std).astype(np.float32))
        p = torch.tensor(np.asarray(counts, dtype=np.float64) / np.sum(counts), dtype=torch.float64)
        d, h = X.shape[1], self.hidden
        self.net = nn.ModuleDict({
            "encoder": nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2 * self.latent)),
            "decoder": nn.Sequential(nn.Linear(self.latent, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d)),
        })
        optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(self.seed)
        batch = max(64, min(512, len(configs)))
        self.losses: list[float] = []
        for _ in range(epochs):
            idx = torch.multinomial(p, batch, replacement=True, generator=generator)
            x = Z[idx]
            mu, log_var = self.net["encoder"](x).chunk(2, dim=1)
            z = mu + torch.randn(mu.shape, generator=generator) * torch.exp(0.5 * log_var)
            recon = ((self.net["decoder"](z) - x) ** 2).sum(1).mean()
            kl = (-0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(1)).mean()
            loss = recon + self.beta * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.losses.append(loss.item())
        self.net.eval()
        self.real = X
        return self

    def sample_vectors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` decoded vectors in linear units (channels, sizes), one row per sample."""
        import torch

        if self.net is None:
            raise RuntimeError("this KernelConfigVAE is not fitted; call fit(configs, counts) first")
        z = torch.from_numpy(rng.standard_normal((n, self.latent)).astype(np.float32))
        with torch.no_grad():
            decoded = self.net["decoder"](z).numpy().astype(np.float64)
        return np.exp2(decoded * self.std + self.mean)


def _type_inputs(pool: KernelPool, kernel_type: str) -> tuple[list[KernelConfig], np.ndarray]:
    keys = list(pool.counts[kernel_type])
    return [pool.configs[k] for k in keys], np.array([pool.counts[kernel_type][k] for k in keys], dtype=np.float64)


def _fill(kernel_type: str, quota: int, propose: Any, most_macs: float, taken: set[str],
          max_attempts: int, quiet: bool = False) -> list[KernelConfig]:
    picked: list[KernelConfig] = []
    attempts = 0
    while len(picked) < quota and attempts < max_attempts * quota:
        attempts += 1
        candidate = propose()
        if candidate is None or candidate.key() in taken:
            continue
        if most_macs and kernel_macs(candidate) > most_macs:
            continue
        taken.add(candidate.key())
        picked.append(candidate)
    if len(picked) < quota and not quiet:
        logger.info("%s: %d of %d configurations (no more distinct ones found)", kernel_type, len(picked), quota)
    return picked


def _sample(pool: KernelPool, total: int, how: str, seed: int, min_per_type: int | None, exclude: Sequence[str],
            max_macs_factor: float, max_attempts: int, vae_options: dict[str, Any]) -> list[KernelConfig]:
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    rng = np.random.default_rng(seed)
    types = [t for t in pool.kernel_types if pool.occurrences(t)]
    if min_per_type is None:
        min_per_type = max(2, total // (4 * max(1, len(types))))
    taken = set(exclude)
    chosen: list[KernelConfig] = []
    proposers: dict[str, tuple[Any, float]] = {}
    quotas = _quotas(pool, total, min_per_type, 0.5)
    for kind in quotas:
        proposers[kind] = _proposer(pool, kind, how, rng, seed, max_macs_factor, vae_options)
        chosen += _fill(kind, quotas[kind], *proposers[kind], taken, max_attempts)
    # A type whose real configurations are few (or profiled as seen) may fall short of its quota:
    # the rest of the budget goes to the other types, most frequent first.
    for kind in sorted(quotas, key=lambda t: -pool.occurrences(t)):
        if len(chosen) >= total:
            break
        chosen += _fill(kind, total - len(chosen), *proposers[kind], taken, max_attempts, quiet=True)
    return chosen


def _proposer(pool: KernelPool, kind: str, how: str, rng: np.random.Generator, seed: int, max_macs_factor: float,
              vae_options: dict[str, Any]) -> tuple[Any, float]:
    """A function drawing one candidate configuration of ``kind``, and the MACs cap (0: none)."""
    configs, counts = _type_inputs(pool, kind)
    p = counts / counts.sum()
    if kind in _REAL_ONLY or not numeric_dimensions(kind):
        return (lambda: configs[int(rng.choice(len(configs), p=p))]), 0.0
    most_macs = max(kernel_macs(c) for c in configs) * max_macs_factor
    dims = numeric_dimensions(kind)
    seen = _seen_values(configs)
    if how == "vae":
        vae = KernelConfigVAE(kind, seed=seed, **vae_options).fit(configs, counts)
        real_std = (vae.real - vae.mean) / vae.std

        def propose() -> KernelConfig | None:
            values = vae.sample_vectors(1, rng)[0]
            z = (np.log2(values) - vae.mean) / vae.std
            template = configs[int(np.argmin(((real_std - z) ** 2).sum(1)))]
            return _with_values(template, dims, values, seen)
    else:
        bounds = [(min(seen[g[0]]), max(seen[g[0]])) for _, g in dims]

        def propose() -> KernelConfig | None:
            template = configs[int(rng.integers(len(configs)))]
            values = [rng.uniform(lo, hi) if role == "channels" else float(rng.choice(seen[g[0]]))
                      for (role, g), (lo, hi) in zip(dims, bounds)]
            return _with_values(template, dims, values, seen)
    return propose, most_macs


def sample_configs_vae(pool: KernelPool, total: int, *, seed: int = 0, min_per_type: int | None = None,
                       exclude: Sequence[str] = (), max_macs_factor: float = 1.5, max_attempts: int = 50,
                       **vae_options: Any) -> list[KernelConfig]:
    """``total`` distinct configurations drawn from per-type VAEs fitted on ``pool`` (see module doc).

    ``exclude``: config keys not to return (e.g. the probe set, already profiled). Types profiled
    as seen (layout, concat) are drawn from the real configurations by frequency.
    """
    return _sample(pool, total, "vae", seed, min_per_type, exclude, max_macs_factor, max_attempts, vae_options)


def sample_configs_uniform(pool: KernelPool, total: int, *, seed: int = 0, min_per_type: int | None = None,
                           exclude: Sequence[str] = (), max_macs_factor: float = 1.5,
                           max_attempts: int = 50) -> list[KernelConfig]:
    """``total`` distinct configurations with each dimension uniform over the type's seen range."""
    return _sample(pool, total, "uniform", seed, min_per_type, exclude, max_macs_factor, max_attempts, {})
