"""``moonlit-litepred`` (also ``python -m moonlit.litepred``): profile, build, calibrate, predict, evaluate, adapt.

Every subcommand reads ``configs/litepred/litepred.yaml`` with Hydra-style overrides::

    moonlit-litepred backends
    moonlit-litepred profile  platform=ort-fp32 budget.kernels=6000
    moonlit-litepred build    platform=ort-fp32
    moonlit-litepred calibrate platform=ort-fp32 calibrate.repeat=1   # re-fit the overhead on models measured now
    moonlit-litepred predict  platform=ort-fp32 model=path/to/model.onnx
    moonlit-litepred evaluate platform=ort-fp32
    moonlit-litepred adapt    platform=ort-int8 adapt.budget=300   # transfer from the knowledge pool

Profiling appends each measurement to ``dataset`` as it is taken, so a killed ``profile`` or
``build`` re-run with the same overrides continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from moonlit.common.config import compose_config, to_container
from moonlit.common.errors import InputError
from moonlit.litepred.pipeline import (
    KernelCache,
    build_pool,
    calibrate_overhead,
    measured_models,
    profile_kernels,
    profile_models,
    timed_predict_onnx,
    train_predictor,
)
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.profile import get_platform, list_platforms
from moonlit.litepred.profile.dataset import ProfileDataset
from moonlit.litepred.profile.sampler import sample_configs
from moonlit.litepred.zoo import (
    ArchSpec,
    calibration_architectures,
    training_architectures,
)

__all__ = ["main", "run_build", "run_evaluate", "run_predict", "run_profile"]

logger = logging.getLogger("moonlit.litepred")

COMMANDS = ("backends", "profile", "build", "calibrate", "predict", "evaluate", "adapt")


def _backend(cfg: DictConfig) -> Any:
    return get_platform(cfg.platform, **OmegaConf.to_container(cfg.backend, resolve=True))


# Whole models measured to fit the overhead term when ``architectures.calibration`` is null: enough
# for the per-type factors' leave-one-out choice, and never more than the training architectures.
DEFAULT_CALIBRATION_MODELS = 60


def _calibration_count(cfg: DictConfig) -> int:
    """``architectures.calibration``, or ``min(DEFAULT_CALIBRATION_MODELS, architectures.train)`` when null."""
    a = cfg.architectures
    train = a.train
    if isinstance(train, bool) or not isinstance(train, int) or train < 1:
        raise InputError(f"architectures.train = {train!r}; expected an int >= 1")
    if a.calibration is None:
        return min(DEFAULT_CALIBRATION_MODELS, train)
    if isinstance(a.calibration, bool) or not isinstance(a.calibration, int) or a.calibration < 0:
        raise InputError(f"architectures.calibration = {a.calibration!r}; expected null or an int >= 0")
    if a.calibration > train:
        raise InputError(f"architectures.calibration ({a.calibration}) must not exceed architectures.train ({train}); "
                         "leave it null for min(60, train)")
    return int(a.calibration)


def _training_specs(cfg: DictConfig) -> list[ArchSpec]:
    a = cfg.architectures
    _calibration_count(cfg)
    families = list(a.families) if a.families else None
    return training_architectures(int(a.train), seed=int(a.seed), families=families)


def run_profile(cfg: DictConfig, backend: Any = None) -> dict[str, Any]:
    """Kernels of the training architectures → sampled configurations → profiled; calibration models measured."""
    specs = _training_specs(cfg)
    cache = KernelCache(cfg.kernel_cache, cfg.rules)
    pool = build_pool(cache, specs)
    pool.save(Path(cfg.work_dir) / f"pool-{cfg.rules}.json")
    b = cfg.budget
    configs = sample_configs(pool, int(b.kernels), seed=int(b.seed), min_per_type=int(b.min_per_type),
                             neighbour_fraction=float(b.neighbour_fraction))
    backend = backend or _backend(cfg)
    dataset = ProfileDataset(cfg.dataset)
    kernels = profile_kernels(configs, backend, dataset)
    models = profile_models(calibration_architectures(specs, _calibration_count(cfg)), backend, dataset,
                            desc="measuring calibration models")
    summary = {"platform": backend.name, "pool": pool.summary(), "sampled": len(configs), "kernels": kernels,
               "calibration_models": models}
    logger.info("profiled %d kernels (%d already in %s, %d failed) in %.0f s", kernels["measured"],
                kernels["already_measured"], cfg.dataset, len(kernels["failed"]), kernels["seconds"])
    return summary


def _weight_rates(value: Any) -> tuple[float, ...]:
    """``overhead.weight_rates``: null = the default grid, a list, or one number (fixed)."""
    from moonlit.litepred.predict.calibration import WEIGHT_RATE_GRID

    if value is None:
        return WEIGHT_RATE_GRID
    values = [value] if isinstance(value, (int, float)) else list(value)
    if not values or any(not isinstance(v, (int, float)) or v < 0 for v in values):
        raise InputError(f"overhead.weight_rates = {value!r}; expected null, a number >= 0 or a list of them")
    return tuple(float(v) for v in values)


def run_build(cfg: DictConfig) -> dict[str, Any]:
    """:func:`run_profile`, then one regressor per kernel type, the overhead fit, saved to ``predictor_dir``."""
    start = time.perf_counter()
    backend = _backend(cfg)
    profiled = run_profile(cfg, backend)
    dataset = ProfileDataset(cfg.dataset)
    predictor = train_predictor(dataset, backend.name, regressor=cfg.regressor,
                                options=OmegaConf.to_container(cfg.regressor_options, resolve=True),
                                metadata={**backend.metadata(), "rules": cfg.rules}, min_rows=int(cfg.min_rows),
                                seed=int(cfg.budget.seed), statistic=cfg.statistic)
    specs = calibration_architectures(_training_specs(cfg), _calibration_count(cfg))
    cache = KernelCache(cfg.kernel_cache, cfg.rules)
    overhead = calibrate_overhead(predictor, cache, specs,
                                  measured_models(dataset, backend.name, specs, statistic=cfg.statistic),
                                  per_type=bool(cfg.overhead.per_type), ridge=cfg.overhead.ridge,
                                  weight_rates=_weight_rates(cfg.overhead.get("weight_rates")))
    out = Path(cfg.predictor_dir)
    predictor.save(out)
    kernel_seconds = sum(float(r.metadata.get("seconds", 0.0))
                         for r in dataset.records(backend=backend.name, kind="kernel"))
    summary = {**profiled, "overhead": overhead, "kernel_types": predictor.kernel_types,
               "selection": {t: {"selected": c["selected"], **{name: {k: r[k] for k in ("within_10pct", "mape", "fit_seconds")}
                                                           for name, r in c["candidates"].items()}}
                             for t, c in predictor.platform.get("selection", {}).items()},
               "build_seconds": time.perf_counter() - start, "kernel_profiling_seconds_total": kernel_seconds,
               "config": to_container(cfg)}
    (out / "build.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    logger.info("predictor for %s saved to %s (%d kernel types, overhead %.3f x + %.3f ms)", backend.name, out,
                len(predictor.kernel_types), overhead["slope"], overhead["intercept"])
    return summary


def run_calibrate(cfg: DictConfig, backend: Any = None) -> dict[str, Any]:
    """Measure the calibration models again (pass ``calibrate.repeat``) and re-fit the overhead term.

    The kernel regressors are kept; only the whole-model term (slope, per-type factors, weight
    floor) is fitted again, on measurements taken now. On a machine whose speed drifts between
    sessions this brings a predictor built in one session to the next one's speed in the time the
    calibration models take to measure (a few minutes), instead of a new build.
    """
    start = time.perf_counter()
    repeat = int(cfg.calibrate.repeat)
    if repeat < 0:
        raise InputError(f"calibrate.repeat must be >= 0, got {repeat}")
    predictor = PlatformPredictor.load(cfg.predictor_dir)
    backend = backend or _backend(cfg)
    if predictor.platform.get("name", backend.name) != backend.name:
        raise InputError(f"the predictor in {cfg.predictor_dir} is for {predictor.platform.get('name')!r}, "
                         f"not for platform={backend.name!r}")
    statistic = predictor.platform.get("statistic", cfg.statistic)
    specs = calibration_architectures(_training_specs(cfg), _calibration_count(cfg))
    dataset = ProfileDataset(cfg.dataset)
    profiling = profile_models(specs, backend, dataset, first_repeat=repeat, desc=f"calibration models, pass {repeat}")
    measured = measured_models(dataset, backend.name, specs, repeat, statistic=statistic)
    built = measured_models(dataset, backend.name, specs, 0, statistic=statistic)
    cache = KernelCache(cfg.kernel_cache, cfg.rules)
    before = dataclasses.asdict(predictor.overhead)
    overhead = calibrate_overhead(predictor, cache, specs, measured, per_type=bool(cfg.overhead.per_type),
                                  ridge=cfg.overhead.ridge, weight_rates=_weight_rates(cfg.overhead.get("weight_rates")))
    out = Path(cfg.calibrate.out_dir or cfg.predictor_dir)
    predictor.save(out)
    both = np.isfinite(built) & np.isfinite(measured)
    summary = {"platform": backend.name, "repeat": repeat, "models": len(specs), "profiling": profiling,
               "now_vs_pass0": float(np.median(measured[both] / built[both])) if both.any() and repeat else None,
               "overhead_before": before, "overhead": overhead, "predictor_dir": str(out),
               "seconds": time.perf_counter() - start}
    (out / "calibrate.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    ratio = summary["now_vs_pass0"]
    print(f"{backend.name}: overhead re-fitted on {overhead['models']} calibration models measured in pass {repeat}"
          + (f" (they take {ratio:.2f}x as long as when the predictor was built)" if ratio else "")
          + f"; slope {before['slope']:.3f} -> {overhead['slope']:.3f}, leave-one-out error "
          + (f"{before['cv_error']:.1%} -> " if before.get("cv_error") is not None else "")
          + (f"{overhead['cv_error']:.1%}" if overhead.get("cv_error") is not None else "n/a")
          + f"; saved to {out}")
    return summary


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """Latency of one model (an ``.onnx`` file, or a zoo architecture name) on ``platform``."""
    if cfg.model is None:
        raise InputError("predict needs model=<path/to/model.onnx or a zoo name such as "
                         "timm-mobile/mobilenetv3_large_100@224>")
    predictor = PlatformPredictor.load(cfg.predictor_dir)
    path = Path(str(cfg.model))
    if path.suffix != ".onnx":
        from moonlit.litepred.pipeline import export_spec

        spec = resolve_spec(str(cfg.model))
        path = export_spec(spec, Path(cfg.work_dir) / "predict" / (spec.name.replace("/", "_") + ".onnx"))
    elif not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    shapes = OmegaConf.to_container(cfg.input_shapes, resolve=True) if cfg.input_shapes else None
    result = timed_predict_onnx(predictor, path, cfg.rules, shapes)
    result["model"] = str(cfg.model)
    print(f"{cfg.model}: {result['latency_ms']:.3f} ms predicted on {cfg.platform} "
          f"({result['kernels']} kernels, {result['seconds']['total'] * 1000:.1f} ms to predict)")
    if result["unpredicted_kernels"] or result["unassigned_nodes"]:
        print(f"  not predicted: {len(result['unpredicted_kernels'])} kernels of types without a regressor, "
              f"{len(result['unassigned_nodes'])} unassigned nodes")
    return result


def resolve_spec(text: str) -> ArchSpec:
    """A zoo architecture from ``family/description@res`` (e.g. ``timm-mobile/efficientnet_b0@224``),
    ``family:description@res`` (any grammar string), or the name of a default held-out/training spec."""
    from moonlit.litepred.zoo import get_family, heldout_architectures, list_families

    head, _, resolution = text.rpartition("@")
    for separator in (":", "/"):
        family, found, description = head.partition(separator)
        if found and family in list_families() and resolution.isdigit():
            try:
                return get_family(family).make_spec(description, int(resolution))
            except ValueError:
                if separator == ":":
                    raise
    for spec in [*heldout_architectures(), *training_architectures(150, seed=1)]:
        if spec.name == text:
            return spec
    raise InputError(f"model {text!r} is neither an .onnx file nor a zoo architecture; use "
                     f"'<family>/<description>@<resolution>' or '<family>:<description>@<resolution>' with a family "
                     f"of {list_families()}")


def run_evaluate(cfg: DictConfig, section: dict[str, Any] | None = None) -> dict[str, Any]:
    """Held-out models measured ``heldout.repeats`` times and predicted.

    See :func:`.predict.evaluate.evaluate_platform`.
    """
    from moonlit.litepred.predict.evaluate import evaluate_platform

    h = cfg.heldout
    results = evaluate_platform(cfg.predictor_dir, cfg.dataset, KernelCache(cfg.kernel_cache, cfg.rules),
                                cfg.output_dir, platform=cfg.platform,
                                backend_options=OmegaConf.to_container(cfg.backend, resolve=True), n=int(h.n),
                                seed=int(h.seed), families=list(h.families) if h.families else None,
                                repeats=int(h.repeats), speed_models=int(h.speed_models),
                                batch_architectures=int(h.batch_architectures),
                                kernel_remeasure=int(h.kernel_remeasure),
                                extra_models=[resolve_spec(str(name)) for name in h.models], section=section,
                                first_repeat=int(h.first_repeat))
    a = results["accuracy"]
    print(f"{cfg.platform}: {a['n']} held-out models, ±5% {a['within_5pct']:.1%}, ±10% {a['within_10pct']:.1%}"
          + (f" (measurement ceiling ±10% {a['ceiling_within_10pct']:.1%})" if "ceiling_within_10pct" in a else "")
          + f", MAPE {a['mape']:.1%}; written to {cfg.output_dir}")
    for earlier in a.get("earlier_passes", []):
        print(f"  the same models measured {earlier['hours_before']:.1f} h earlier (pass {earlier['pass']}) agree within "
              f"±10% for {earlier['within_10pct']:.1%} (the machine's drift between sessions)")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moonlit-litepred", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides of configs/litepred/litepred.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "backends":
        for name in list_platforms():
            print(name)
        return
    from moonlit.common.errors import exit_on_user_error
    from moonlit.litepred.transfer.adapt import run_adapt

    runner = {"profile": run_profile, "build": run_build, "calibrate": run_calibrate, "predict": run_predict,
              "evaluate": run_evaluate, "adapt": run_adapt}
    # a user error (bad override, missing file, bad value) is one line and exit status 2; MOONLIT_DEBUG=1 traces
    with exit_on_user_error(parser.prog):
        runner[args.command](compose_config("litepred", "litepred", args.overrides))


if __name__ == "__main__":
    main()
