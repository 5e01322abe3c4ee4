"""GLUE metrics (Wang et al., ICLR 2019, Table 1) under the names Hugging Face ``evaluate`` uses.

CoLA: Matthews correlation; MRPC and QQP: accuracy and F1 of the positive class; STS-B: Pearson
and Spearman correlation; the others: accuracy. Computed with scikit-learn and SciPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from moonlit.common.errors import InputError

from .glue import GlueTask, get_glue_task


def _class_ids(predictions: np.ndarray, spec: GlueTask) -> np.ndarray:
    if predictions.ndim == 2:
        if predictions.shape[1] != spec.num_labels:
            raise InputError(f"{spec.name} logits have {predictions.shape[1]} columns, expected "
                             f"{spec.num_labels} (one per label {list(spec.label_names)})")
        return predictions.argmax(axis=1)
    if predictions.ndim != 1:
        raise InputError(f"{spec.name} predictions must be logits (n, {spec.num_labels}) or class ids (n,), "
                         f"got shape {predictions.shape}")
    ids = predictions.astype(np.int64)
    if not np.array_equal(ids, predictions) or ids.min() < 0 or ids.max() >= spec.num_labels:
        raise InputError(f"{spec.name} class-id predictions must be integers in 0..{spec.num_labels - 1}, "
                         f"got values in [{predictions.min()}, {predictions.max()}]")
    return ids


def compute_glue_metrics(task: str | GlueTask, predictions: Any, labels: Any) -> dict[str, float]:
    """All of ``task``'s metrics (``GlueTask.metrics``) for one evaluation split.

    ``predictions`` are logits of shape (n, num_labels) or class ids of shape (n,) for
    classification, floats of shape (n,) or (n, 1) for STS-B. ``labels`` must be real labels:
    the hidden test labels (-1) cannot be scored. A correlation of constant input is NaN.
    """
    spec = get_glue_task(task)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise InputError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if spec.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.shape != labels.shape:
            raise InputError(f"{spec.name} predictions have shape {predictions.shape}, expected {labels.shape}")
        if np.any(labels < 0):  # STS-B scores lie in [0, 5]; -1 marks the hidden test labels
            raise InputError(f"{spec.name} labels contain negative values (-1 marks the hidden test labels); "
                             f"score a validation split")
        predictions, labels = predictions.astype(np.float64), labels.astype(np.float64)
        return {"pearson": float(stats.pearsonr(predictions, labels)[0]),
                "spearmanr": float(stats.spearmanr(predictions, labels)[0])}
    if np.any(labels == -1):
        raise InputError(f"{spec.name} labels contain -1, the hidden test labels; score a validation split")
    ids = _class_ids(predictions, spec)
    if ids.shape != labels.shape:
        raise InputError(f"{spec.name} has {ids.shape[0]} predictions but {labels.shape[0]} labels")
    metric_fns = {"accuracy": lambda: np.mean(ids == labels),
                  "f1": lambda: f1_score(labels, ids, zero_division=0.0),
                  "matthews_correlation": lambda: matthews_corrcoef(labels, ids)}
    return {name: float(metric_fns[name]()) for name in spec.metrics}
