"""The per-kernel MLP latency regressor (LitePred, NSDI'24, Sec. 4).

:class:`MLPRegressor` (torch, CPU): a ``hidden_layers x hidden_width`` ReLU MLP on
:class:`.regressors.FeatureTransform` features, deterministic validation split, Adam + cosine
schedule, early stopping on validation MAPE with best-weights restore, and
:meth:`MLPRegressor.fine_tune` for cross-platform transfer. Saving, loading and the target choice
are described in :mod:`.regressors`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from moonlit.litepred.predict.regressors import FeatureTransform, Regressor, _check_xy

EXTRAPOLATION_LIMIT = 4.0

__all__ = ["MLPRegressor"]


class MLPRegressor(Regressor):
    """ReLU MLP on transformed features; early stopping on validation MAPE, best weights restored.

    Deterministic given ``seed`` (initialization, validation split and batch order all derive from
    it; the global torch RNG is left untouched). ``history`` lists per-epoch train loss and
    validation MAPE; ``training`` summarizes the run (best epoch, epochs run, sizes). The
    reference's recipe is ``MLPRegressor(16, 180, target="raw", log_features=None,
    val_fraction=0.0, batch_size=32, max_epochs=350)`` (~0.5 M parameters, MAPE loss, no early stop).
    """

    kind = "mlp"

    def __init__(self, hidden_layers: int = 4, hidden_width: int = 256, *, target: str = "log",
                 lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 64, max_epochs: int = 300,
                 patience: int = 30, val_fraction: float = 0.15, seed: int = 0,
                 log_features: str | Sequence[str] | None = "auto"):
        super().__init__(target, log_features)
        if hidden_layers < 1 or hidden_width < 1:
            raise ValueError(f"hidden_layers={hidden_layers}, hidden_width={hidden_width}; expected both >= 1")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction = {val_fraction}; expected a fraction in [0, 1)")
        if batch_size < 1 or max_epochs < 1 or patience < 1:
            raise ValueError(f"batch_size={batch_size}, max_epochs={max_epochs}, patience={patience}; expected >= 1")
        self.hidden_layers, self.hidden_width = int(hidden_layers), int(hidden_width)
        self.lr, self.weight_decay, self.batch_size = float(lr), float(weight_decay), int(batch_size)
        self.max_epochs, self.patience, self.val_fraction = int(max_epochs), int(patience), float(val_fraction)
        self.seed = int(seed)
        self.net: Any = None
        self.target_shift, self.target_scale = 0.0, 1.0
        self.history: list[dict[str, float]] = []
        self.val_index = np.zeros(0, dtype=np.int64)  # rows of the last fit's X held out for early stopping

    def hyperparameters(self) -> dict[str, Any]:
        return {"hidden_layers": self.hidden_layers, "hidden_width": self.hidden_width, "lr": self.lr,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size, "max_epochs": self.max_epochs,
                "patience": self.patience, "val_fraction": self.val_fraction, "seed": self.seed,
                "target_shift": self.target_shift, "target_scale": self.target_scale}

    def _build(self, n_features: int) -> Any:
        import torch
        from torch import nn

        layers: list[nn.Module] = []
        width_in = n_features
        for _ in range(self.hidden_layers):
            layers += [nn.Linear(width_in, self.hidden_width), nn.ReLU()]
            width_in = self.hidden_width
        layers.append(nn.Linear(width_in, 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = nn.Sequential(*layers)
            for module in net:
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
        return net

    def _to_latency(self, out: Any) -> Any:
        import torch

        if self.target == "log":
            return torch.exp(out * self.target_scale + self.target_shift)
        # raw target: floor at a tiny positive latency so that metrics and sums stay meaningful
        return torch.clamp(out * self.target_scale, min=1e-9)

    def _loss(self, out: Any, y: Any) -> Any:
        if self.target == "log":
            return ((out - (y.log() - self.target_shift) / self.target_scale) ** 2).mean()
        return ((out * self.target_scale - y).abs() / y).mean()  # the reference's MAPE loss

    def fit(self, X: Any, y: Any, feature_names: Sequence[str]) -> MLPRegressor:
        """Fit the transform and the network on ``(X, y)``; a ``val_fraction`` share is held out."""
        X, y = _check_xy(X, y, len(feature_names))
        train_idx, val_idx = _split(len(y), self.val_fraction, self.seed)
        self.val_index = val_idx
        self.transform = FeatureTransform.fit(X[train_idx], feature_names, self.log_features)
        if self.target == "log":
            logs = np.log(y[train_idx])
            self.target_shift, self.target_scale = float(logs.mean()), float(max(logs.std(), 1e-6))
        else:
            self.target_shift, self.target_scale = 0.0, float(y[train_idx].mean())
        self.net = self._build(X.shape[1])
        self.history = []
        summary = self._train(X, y, train_idx, val_idx, self.lr, self.max_epochs, self.patience, self.seed,
                              self.batch_size)
        self.training = {"fit": summary, "target_range": [float(y.min()), float(y.max())]}
        return self

    def fine_tune(self, X: Any, y: Any, lr: float = 1e-4, epochs: int = 100, *, batch_size: int | None = None,
                  val_fraction: float = 0.0, patience: int | None = None, renormalize: bool = False,
                  seed: int | None = None) -> MLPRegressor:
        """Continue training from the current weights on new data (e.g. another platform's kernels).

        ``renormalize=False`` keeps the source platform's feature mean/std; True refits them on ``X``
        (the log columns and scales and the target normalization are always kept, so the output
        layer stays calibrated). With ``val_fraction > 0`` early stopping restores the best epoch.
        """
        transform = self._fitted()
        X, y = _check_xy(X, y, len(transform.feature_names))
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction = {val_fraction}; expected a fraction in [0, 1)")
        seed = self.seed if seed is None else int(seed)
        train_idx, val_idx = _split(len(y), val_fraction, seed)
        if renormalize:
            transform.fit_standardization(X[train_idx])
        summary = self._train(X, y, train_idx, val_idx, float(lr), int(epochs),
                              int(patience if patience is not None else epochs), seed,
                              int(batch_size or self.batch_size))
        summary.update(lr=float(lr), renormalize=bool(renormalize))
        self.training.setdefault("fine_tune", []).append(summary)
        # the new platform's latencies are the ones to stay near from now on
        self.training["target_range"] = [float(y.min()), float(y.max())]
        return self

    def _train(self, X: np.ndarray, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, lr: float,
               epochs: int, patience: int, seed: int, batch_size: int) -> dict[str, Any]:
        import torch

        Z = torch.from_numpy(self._fitted().apply(X).astype(np.float32))
        Y = torch.from_numpy(y.astype(np.float32))
        Zt, Yt, Zv, Yv = Z[train_idx], Y[train_idx], Z[val_idx], Y[val_idx]
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        best = (math.inf, -1, None)  # (val MAPE, epoch, state)
        start = len(self.history)
        for epoch in range(epochs):
            self.net.train()
            order = torch.randperm(len(Yt), generator=generator)
            total = 0.0
            for begin in range(0, len(order), batch_size):
                batch = order[begin:begin + batch_size]
                loss = self._loss(self.net(Zt[batch]).squeeze(1), Yt[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            scheduler.step()
            record = {"epoch": epoch, "train_loss": total / len(Yt)}
            if len(Yv):
                self.net.eval()
                with torch.no_grad():
                    pred = self._to_latency(self.net(Zv).squeeze(1))
                record["val_mape"] = float(((pred - Yv).abs() / Yv).mean())
                if record["val_mape"] < best[0]:
                    best = (record["val_mape"], epoch, copy.deepcopy(self.net.state_dict()))
            self.history.append(record)
            if len(Yv) and epoch - best[1] >= patience:
                break
        if best[2] is not None:
            self.net.load_state_dict(best[2])
        self.net.eval()
        return {"n_train": int(len(Yt)), "n_val": int(len(Yv)), "epochs_run": len(self.history) - start,
                "best_epoch": best[1] if len(Yv) else len(self.history) - start - 1,
                "best_val_mape": best[0] if len(Yv) else None,
                "final_train_loss": self.history[-1]["train_loss"]}

    def predict(self, X: Any) -> np.ndarray:
        """Latency (ms) for each row of ``X``: one batched forward pass."""
        import torch

        Z = self._fitted().apply(X)
        if len(Z) == 0:
            return np.zeros(0)
        with torch.no_grad():
            out = self.net(torch.from_numpy(Z.astype(np.float32))).squeeze(1)
            latency = self._to_latency(out).numpy().astype(np.float64)
        # An MLP extrapolates without bound (a log-latency target turns that into exp(large)): on LeViT's
        # kernels under ort-int8 one row came out at 2e13 ms. Keep predictions within a factor
        # EXTRAPOLATION_LIMIT of the latencies it was trained on; trees never leave that range.
        seen = self.training.get("target_range")
        if seen is not None:
            latency = np.clip(latency, seen[0] / EXTRAPOLATION_LIMIT, seen[1] * EXTRAPOLATION_LIMIT)
        return latency

    def _arrays(self) -> dict[str, np.ndarray]:
        return {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}

    @classmethod
    def _from_saved(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> MLPRegressor:
        import torch

        hp = dict(meta["hyperparameters"])
        shift, scale = hp.pop("target_shift"), hp.pop("target_scale")
        reg = cls(**hp, target=meta["target"], log_features=meta["log_features"])
        reg.target_shift, reg.target_scale = float(shift), float(scale)
        reg.net = reg._build(len(meta["feature_names"]))
        state = {k[len("net."):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("net.")}
        reg.net.load_state_dict(state)
        reg.net.eval()
        return reg


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index split; val is empty when the fraction or n is too small."""
    n_val = int(round(n * val_fraction))
    if n_val == 0 or n - n_val < 1:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
