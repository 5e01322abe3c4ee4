"""Hydra configs of moonlit (importable as ``moonlit.configs`` so Hydra finds them by package).

Shared groups live at this level (``trainer/``, ``logger/``, ``paths/``); each paper has its own
tree (``top/``, ``spaceevo/``, ``elasticvit/``, ``litepred/``, ``common/``) whose primary configs add
this package to Hydra's search path, so ``trainer=ddp`` or ``logger=wandb`` work in every app.
"""
