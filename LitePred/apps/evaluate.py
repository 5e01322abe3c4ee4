"""``moonlit-litepred evaluate``: held-out models measured ``heldout.repeats`` times and predicted.

    python -m moonlit.litepred.apps.evaluate platform=ort-fp32

Accuracy beside the measurement ceiling, the prediction speed, and per-family scores go to
``output_dir`` (see :func:`moonlit.litepred.predict.evaluate.evaluate_platform`).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from moonlit.common.config import hydra_app
from moonlit.litepred.pipeline import KernelCache

from . import settings


def run(cfg: DictConfig, section: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the predictor in ``predictor_dir`` on the held-out models; ``section``: a quickstart report section."""
    from moonlit.litepred.predict.evaluate import evaluate_platform

    h = cfg.heldout
    results = evaluate_platform(cfg.predictor_dir, cfg.dataset, KernelCache(cfg.kernel_cache, cfg.rules),
                                cfg.output_dir, platform=cfg.platform,
                                backend_options=OmegaConf.to_container(cfg.backend, resolve=True), n=int(h.n),
                                seed=int(h.seed), families=list(h.families) if h.families else None,
                                repeats=int(h.repeats), speed_models=int(h.speed_models),
                                batch_architectures=int(h.batch_architectures),
                                kernel_remeasure=int(h.kernel_remeasure),
                                extra_models=[settings.resolve_spec(str(name)) for name in h.models], section=section,
                                first_repeat=int(h.first_repeat))
    a = results["accuracy"]
    print(f"{cfg.platform}: {a['n']} held-out models, ±5% {a['within_5pct']:.1%}, ±10% {a['within_10pct']:.1%}"
          + (f" (measurement ceiling ±10% {a['ceiling_within_10pct']:.1%})" if "ceiling_within_10pct" in a else "")
          + f", MAPE {a['mape']:.1%}; written to {cfg.output_dir}")
    for earlier in a.get("earlier_passes", []):
        print(f"  the same models measured {earlier['hours_before']:.1f} h earlier (pass {earlier['pass']}) "
              f"agree within ±10% for {earlier['within_10pct']:.1%} (the machine's drift between sessions)")
    return results


@hydra_app("litepred", "litepred")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
