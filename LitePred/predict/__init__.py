"""Stage 4 of LitePred's pipeline: kernel latencies → model latency (LitePred §4.3, §6).

:mod:`.features` turns a kernel configuration into a feature row; :mod:`.regressors` (with
:mod:`.forest` and :mod:`.mlp`) are the per-kernel-type regressors; :mod:`.predictor` holds a
platform's regressors and sums their predictions, corrected by the overhead term of
:mod:`.calibration`; :mod:`.parts` caches the kernel rows of NAS candidates by part;
:mod:`.metrics` and :mod:`.evaluate` score a predictor on held-out models beside the measurement
ceiling.
"""
