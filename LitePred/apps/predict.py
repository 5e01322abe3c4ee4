"""``moonlit-litepred predict``: the latency of one model (an ``.onnx`` file or a zoo architecture) on ``platform``.

    python -m moonlit.litepred.apps.predict platform=ort-fp32 model=timm-mobile/efficientnet_b0@224

A zoo name is exported to ``work_dir/predict/`` first; ``input_shapes`` fixes an ONNX file's dynamic axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moonlit.common.config import hydra_app
from moonlit.common.errors import InputError
from moonlit.litepred.pipeline import timed_predict_onnx
from moonlit.litepred.predict.predictor import PlatformPredictor

from . import settings


def run(cfg: DictConfig) -> dict[str, Any]:
    """Latency of ``model`` predicted by the predictor in ``predictor_dir``, with the time the prediction took."""
    if cfg.model is None:
        raise InputError("predict needs model=<path/to/model.onnx or a zoo name such as "
                         "timm-mobile/mobilenetv3_large_100@224>")
    predictor = PlatformPredictor.load(cfg.predictor_dir)
    path = Path(str(cfg.model))
    if path.suffix != ".onnx":
        from moonlit.litepred.pipeline import export_spec

        spec = settings.resolve_spec(str(cfg.model))
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


@hydra_app("litepred", "litepred")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
