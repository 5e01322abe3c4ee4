"""Quickstart section "LitePred": build a small predictor for ``ort-fp32`` and score it on held-out models.

Profiles ~300 kernel configurations drawn from 8 training architectures (their real kernels by
frequency, then neighbours), trains one regressor per kernel type, fits the overhead term on 5
whole models, then measures 6 held-out models twice (SpaceEvo-/ElasticViT-/ResNet-like and two
timm mobile models; 30 timed calls each, as for every kernel) and reports ±5%/±10% accuracy beside
the measurement ceiling, with the scatter.
The sizes (``configs/litepred/quickstart.yaml``) keep the section within 3 minutes; the full build
is ``bash scripts/reproduce_litepred.sh``.

    python -m moonlit.litepred.quickstart
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from moonlit.common.config import hydra_app

from .apps import build, evaluate

SECTION = {"name": "litepred", "order": 30, "command": "python -m moonlit.litepred.quickstart"}


def run(cfg: DictConfig) -> dict[str, Any]:
    """The section's small build, then its evaluation, which writes the report section."""
    built = build.run(cfg)
    results = evaluate.run(cfg, section={**SECTION, "title": f"LitePred: a small latency predictor for {cfg.platform}",
                                         "summary": _summary(cfg, built)})
    return {"build": built, "evaluate": results}


def _summary(cfg: DictConfig, build: dict[str, Any]) -> str:
    kernels = build["kernels"]
    return (f"{kernels['measured'] + kernels['already_measured']} kernel configurations from "
            f"{cfg.architectures.train} training architectures profiled on {cfg.platform} "
            f"({build['kernel_profiling_seconds_total']:.0f} s of profiling), one {cfg.regressor} regressor per kernel "
            f"type, overhead fitted on {build['overhead']['models']} whole models "
            f"(model ms = {build['overhead']['slope']:.3f} x kernel sum + {build['overhead']['intercept']:.3f}). "
            f"The held-out models (none used in training) were each measured twice; the ceiling is the share whose "
            f"two measurements agree within ±10%. A small build: the full one is `moonlit-litepred build`.")


@hydra_app("litepred", "quickstart")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
