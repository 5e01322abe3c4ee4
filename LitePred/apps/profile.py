"""``moonlit-litepred profile``: kernels of the training architectures → sampled configurations → profiled.

    python -m moonlit.litepred.apps.profile platform=ort-int8 budget.kernels=3000

Each measurement is appended to ``dataset`` as it is taken, so a killed run re-run with the same
overrides continues where it stopped. The calibration models are measured whole after the kernels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from moonlit.common.config import hydra_app
from moonlit.litepred.pipeline import KernelCache, build_pool, profile_kernels, profile_models
from moonlit.litepred.profile.dataset import ProfileDataset
from moonlit.litepred.profile.sampler import sample_configs
from moonlit.litepred.zoo import calibration_architectures

from . import settings

logger = logging.getLogger("moonlit.litepred")


def run(cfg: DictConfig, backend: Any = None) -> dict[str, Any]:
    """Profile the sampled kernel configurations and the calibration models on ``backend`` (default: ``platform``)."""
    specs = settings.training_specs(cfg)
    cache = KernelCache(cfg.kernel_cache, cfg.rules)
    pool = build_pool(cache, specs)
    pool.save(Path(cfg.work_dir) / f"pool-{cfg.rules}.json")
    b = cfg.budget
    configs = sample_configs(pool, int(b.kernels), seed=int(b.seed), min_per_type=int(b.min_per_type),
                             neighbour_fraction=float(b.neighbour_fraction))
    backend = backend or settings.backend(cfg)
    dataset = ProfileDataset(cfg.dataset)
    kernels = profile_kernels(configs, backend, dataset)
    models = profile_models(calibration_architectures(specs, settings.calibration_count(cfg)), backend, dataset,
                            desc="measuring calibration models")
    summary = {"platform": backend.name, "pool": pool.summary(), "sampled": len(configs), "kernels": kernels,
               "calibration_models": models}
    logger.info("profiled %d kernels (%d already in %s, %d failed) in %.0f s", kernels["measured"],
                kernels["already_measured"], cfg.dataset, len(kernels["failed"]), kernels["seconds"])
    return summary


@hydra_app("litepred", "litepred")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
