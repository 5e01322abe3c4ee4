"""The ``moonlit-litepred`` subcommands, one Hydra app each (``configs/litepred/litepred.yaml``).

Each module has an importable ``run(cfg)`` and a thin ``main`` (``python -m moonlit.litepred.apps.<command>``);
:mod:`moonlit.litepred.cli` dispatches ``moonlit-litepred <command> overrides...`` to them:

- :mod:`.platforms`: list the profiling platforms;
- :mod:`.profile`: profile the kernels and calibration models of the training architectures;
- :mod:`.build`: profile, train one regressor per kernel type, fit the overhead, save the predictor;
- :mod:`.calibrate`: re-measure the calibration models and re-fit the overhead of a built predictor;
- :mod:`.predict`: the latency of one model;
- :mod:`.evaluate`: held-out models measured and predicted;
- :mod:`.adapt`: transfer to a platform from the knowledge pool.

:mod:`.settings` reads the values the subcommands share (architecture counts, backend, model names).
"""
