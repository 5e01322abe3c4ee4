"""Shared toolkit of the moonlit reproductions.

Sub-packages: ``data`` (ImageNet-style folders, GLUE, generated fixtures, real data from the
package registries), ``profiling`` (MACs/params, latency, the FP32/INT8 model benchmark), ``export``
(ONNX, INT8), ``train`` (distributed setup, checkpoints, logging, seeding), ``nas`` (constrained
evolution, hardware constraints, Pareto fronts); modules ``config`` (Hydra entry points),
``errors`` (``InputError``), ``report`` (``REPORT.md`` from run JSON) and ``quickstart``. Code moves
here when a second paper needs it.
"""
