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
for SpaceEvo and ElasticViT), and the ``moonlit-litepred`` CLI (``cli``). See this folder's README.md.
"""
