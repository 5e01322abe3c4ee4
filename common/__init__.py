"""Shared toolkit of the moonlit reproductions.

Sub-packages: ``data`` (ImageNet-style folders, GLUE, generated fixtures), ``profiling``
(MACs/params, latency), ``export`` (ONNX, INT8), ``train`` (distributed setup, checkpoints,
logging, seeding). Code moves here when a second paper needs it.
"""
