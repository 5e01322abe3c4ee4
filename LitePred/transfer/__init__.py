"""Stage 5 of LitePred's pipeline: a predictor for a new platform from a few profiled kernels (NSDI'24 §5).

:mod:`.pool` is the knowledge pool of built platform predictors; :mod:`.similarity` ranks them by
how close each is to the target on a few probe kernels; :mod:`.methods` adapts the closest one
(fine-tune, residual boosting, affine, or the baselines); :mod:`.adapt` is the ``adapt`` command
(profile the target, choose the source, adapt, calibrate, score); :mod:`.experiment` is the
transfer experiment over targets, budgets, samplers and methods
(``python -m moonlit.litepred.transfer.experiment``).
"""
