"""``moonlit-litepred attribute``: where a predictor's model-level error comes from, kernel by kernel.

    python -m moonlit.litepred.apps.attribute platform=ort-fp32 model=timm-mobile/mobilenetv3_large_100@224
    python -m moonlit.litepred.apps.attribute platform=ort-fp32      # the held-out models of `heldout`
    python -m moonlit.litepred.apps.attribute platform=ort-fp32 attribute.in_context=true

Each model is profiled node by node by the platform's engine and joined to the predictor's kernels
(:mod:`moonlit.litepred.predict.attribution`); ``attribute.out_dir`` gets ``attribution.json``,
``attribution.md`` (the tables) and ``attribution.png``. Without ``model``, the models are those
``evaluate`` scores (the same ``heldout`` keys). The predictor is only read: nothing is trained or
calibrated here. ``attribute.in_context=true`` profiles training architectures instead (never a
held-out one) and appends their in-model kernel samples to ``attribute.in_context_path``.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moonlit.common.config import hydra_app
from moonlit.common.errors import InputError
from moonlit.litepred.predict.predictor import PlatformPredictor

from . import settings

PREDICTOR_FILE = "platform.json"


def _models(cfg: DictConfig) -> list[tuple[str, str, Any]]:
    """``(name, family, .onnx path or ArchSpec)`` of the models to attribute (checked before anything runs)."""
    from moonlit.litepred.zoo import heldout_architectures, is_heldout

    if cfg.attribute.in_context:
        specs = settings.training_specs(cfg)[: int(cfg.attribute.in_context_models)]
        leaked = [s.name for s in specs if is_heldout(s)]
        if leaked:  # the zoo keeps the partitions apart; this guards the promise of the in-context data
            raise InputError(f"training architectures {leaked[:3]} are held-out models; expected training models only")
        return [(s.name, s.family, s) for s in specs]
    if cfg.model is not None:
        path = Path(str(cfg.model))
        if path.suffix == ".onnx":
            if not path.is_file():
                raise InputError(f"model={cfg.model}: no such file; expected an .onnx file or a zoo name")
            return [(path.name, "onnx", path)]
        spec = settings.resolve_spec(str(cfg.model))
        return [(spec.name, spec.family, spec)]
    h = cfg.heldout
    specs = heldout_architectures(int(h.n), seed=int(h.seed), families=list(h.families) if h.families else None)
    specs += [s for s in (settings.resolve_spec(str(m)) for m in h.models) if s.name not in {t.name for t in specs}]
    if not specs:
        raise InputError("heldout.n is 0 and heldout.models is empty; expected models to attribute")
    return [(s.name, s.family, s) for s in specs]


def load_predictor(cfg: DictConfig) -> PlatformPredictor:
    """The predictor in ``predictor_dir``; an :class:`InputError` when the platform has none."""
    folder = Path(str(cfg.predictor_dir))
    if not (folder / PREDICTOR_FILE).is_file():
        raise InputError(f"platform {cfg.platform!r} has no predictor at {folder} ({PREDICTOR_FILE} missing); "
                         f"expected one built by `moonlit-litepred build platform={cfg.platform}`")
    try:
        return PlatformPredictor.load(folder)
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        raise InputError(f"{folder}: not a readable predictor ({str(error).splitlines()[0]})") from None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Attribute the predictor's error on ``model`` (or the held-out set); writes the JSON, table and plot."""
    from moonlit.litepred.pipeline import export_spec
    from moonlit.litepred.predict import attribution
    from moonlit.litepred.profile import get_platform
    from moonlit.litepred.profile.dataset import ProfileDataset

    a = cfg.attribute
    if int(a.runs) < 1 or int(a.warmup) < 0:
        raise InputError(f"attribute.runs={a.runs}, attribute.warmup={a.warmup}; expected runs >= 1, warmup >= 0")
    predictor = load_predictor(cfg)
    models = _models(cfg)
    backend = get_platform(str(cfg.platform), **OmegaConf.to_container(cfg.backend, resolve=True))
    shapes = OmegaConf.to_container(cfg.input_shapes, resolve=True) if cfg.input_shapes else None
    out = Path(str(a.out_dir))
    load_before = os.getloadavg()
    results = []
    for name, family, source in models:
        path = source if isinstance(source, Path) else export_spec(
            source, out / "onnx" / (source.name.replace("/", "_") + ".onnx"))
        result = attribution.attribute_onnx(
            predictor, backend, str(cfg.platform), path, name=name, family=family,
            input_shapes=shapes if isinstance(source, Path) else None, warmup=int(a.warmup), runs=int(a.runs),
            measure=bool(a.measure))
        results.append(result)
        print(f"{name}: measured {result.measured_ms:.3f} ms, predicted {result.predicted_ms:.3f} ms "
              f"({100 * result.error_ms / result.measured_ms:+.1f}%), node times sum to {result.node_sum_ms:.3f} ms")
    if a.in_context:
        dataset = ProfileDataset(str(a.in_context_path))
        count = 0
        for result in results:
            for record in attribution.in_context_records(result, backend.name, warmup=int(a.warmup)):
                dataset.append(record)
                count += 1
        print(f"{count} in-model kernel samples of {len(results)} training models appended to {a.in_context_path}")
    summary = {
        "platform": str(cfg.platform), "predictor_dir": str(cfg.predictor_dir),
        "predictor": {"kernel_rows": predictor.platform.get("kernel_rows"),
                      "statistic": predictor.platform.get("statistic")},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "metadata": backend.metadata(), "in_context": bool(a.in_context),
        "models": [r.to_dict() for r in results], "by_type": attribution.by_type(results),
        "by_family": attribution.by_family(results), "by_size": attribution.by_size(results),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "attribution.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    (out / "attribution.md").write_text(attribution.markdown_tables(results))
    attribution.plot_attribution(results, out / "attribution.png", f"{cfg.platform}: {len(results)} models")
    print(attribution.markdown_tables(results))
    print(f"written to {out}")
    return summary


@hydra_app("litepred", "attribute")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
