"""Data for the moonlit reproductions: ImageNet-style folders, GLUE, and generated fixtures.

* ``images``: the ``data`` config group's builders (ImageNet-style folders, generated images,
  Fashion-MNIST as RGB) chosen with ``_target_``; ``build_image_data(cfg.data)``.
* ``imagenet``: ``ImageFolder`` datasets with timm transforms, a held-out search split, loaders.
* ``glue``: the eight GLUE tasks (metadata, loading from the Hub or the classic TSVs, tokenizing);
  ``glue_metrics``: their metrics.
* ``synthetic`` (with ``synthetic_glue``): learnable on-disk stand-ins for ImageNet, GLUE and
  pretrained BERT / RoBERTa, for tests and the quickstart.

The names below are imported lazily, so ``import moonlit.common.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "images": ("FashionMNISTData", "GeneratedData", "ImageDatasets", "ImageFolderData", "build_image_data",
               "image_data_from_config"),
    "imagenet": ("build_imagenet_datasets", "build_loader", "build_transform", "holdout_indices"),
    "loaders": ("resolve_rank_world", "set_epoch"),
    "glue": ("GLUE_TASKS", "LOCAL_TASKS", "GlueTask", "get_glue_task", "glue_features", "load_glue", "tokenize_glue"),
    "glue_metrics": ("compute_glue_metrics",),
    "synthetic": ("image_class_names", "train_bpe_tokenizer", "train_wordpiece_tokenizer", "write_fixtures",
                  "write_glue_tsvs", "write_image_folder", "write_tiny_bert", "write_tiny_roberta"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
