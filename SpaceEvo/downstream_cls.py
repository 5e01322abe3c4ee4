"""Transfer of a SEQnet to a downstream classification dataset (SpaceEvo, ICCV'23, §5.3 "transfer learning").

``python -m moonlit.spaceevo.downstream_cls model=SEQnet@vnni-A0 checkpoint=/ckpt/lsq.pth data.root=/data/cifar10``

As the reference's ``downstream_cls.py``: the ImageNet subnet is taken from its supernet with BN
re-estimated on the new training images, the 1000-way classifier is replaced by one for the
dataset's classes, and the whole network (or the head only) is fine-tuned with SGD Nesterov and
label smoothing 0.1. The training loop is the shared :func:`moonlit.common.train.classifier.train_classifier`
(warm-up + cosine schedule, resumable checkpoints, DDP); the reference used warm-up + linear decay.
Any ImageFolder dataset (``root/{train,val}/<class>/*``) works, the generated one included.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.imagenet import build_loader
from moonlit.common.data.images import build_image_data
from moonlit.common.models import create_model
from moonlit.common.train.bn_recalibration import recalibrate_batch_norm
from moonlit.common.train.classifier import evaluate_top1, train_classifier
from moonlit.common.train.dist import cleanup_distributed
from moonlit.common.train.optim import build_optimizer_from_config
from moonlit.common.train.supernet import start_training
from moonlit.spaceevo.models import resolve_model
from moonlit.spaceevo.ops.lsq_plus import QuantLinear, set_quant_mode
from moonlit.spaceevo.supernet import StaticSubnet

__all__ = ["downstream_cls", "replace_classifier", "run"]

log = logging.getLogger(__name__)


def replace_classifier(model: StaticSubnet, num_classes: int, head_only: bool = False) -> StaticSubnet:
    """A fresh ``num_classes``-way classifier (in the model's quantization mode); freeze the rest if ``head_only``."""
    if num_classes < 1:
        raise ValueError(f"num_classes = {num_classes}; expected >= 1")
    old = model.classifier
    model.classifier = QuantLinear(old.in_features, num_classes)
    if old.act_quant.bits is not None:
        set_quant_mode(model.classifier, old.act_quant.bits)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not head_only or name.startswith("classifier."))
    return model


def downstream_cls(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.data.root``; returns (and writes) the per-epoch validation history."""
    ctx = start_training(cfg.trainer)
    out_dir = Path(cfg.output_dir)
    try:
        data = cfg.data
        spec = resolve_model(cfg.model, cfg.search_result)
        datasets = build_image_data(data, is_main=ctx.is_main, img_size=data.img_size or spec.subnet.resolution)
        num_classes = datasets.num_classes
        model = create_model(spec.model_name, checkpoint=cfg.checkpoint, num_classes=cfg.pretrained_num_classes,
                             quantized=cfg.quant)
        train_loader = build_loader(datasets["train"], data.batch_size, shuffle=True, seed=cfg.trainer.seed,
                                    drop_last=True, num_workers=cfg.trainer.num_workers, rank=ctx.rank,
                                    world_size=ctx.world_size)
        val_loader = build_loader(datasets["val"], data.eval_batch_size, shuffle=False,
                                  num_workers=cfg.trainer.num_workers, rank=ctx.rank, world_size=ctx.world_size)
        if cfg.bn_calibration_batches > 0:
            recalibrate_batch_norm(model, train_loader, cfg.bn_calibration_batches)
        model = replace_classifier(model, num_classes, cfg.head_only).to(ctx.device)
        # decay on every trainable parameter, as the reference's downstream recipe
        make_optimizer = functools.partial(build_optimizer_from_config, node=cfg.optim, no_decay=None)
        with instantiate(cfg.logger)(out_dir, run_name=f"downstream-{cfg.model}", config=to_container(cfg)) as logger:
            run = train_classifier(model, train_loader, val_loader, ctx=ctx, make_optimizer=make_optimizer,
                                   epochs=cfg.epochs, checkpoint_dir=out_dir / "checkpoints", logger=logger,
                                   label_smoothing=cfg.label_smoothing,
                                   warmup_steps=cfg.warmup_epochs * len(train_loader),
                                   arch={"model": cfg.model, "num_classes": num_classes}, config=to_container(cfg))
        final = evaluate_top1(model, val_loader, ctx.device, ctx)
        summary = {"model": cfg.model, "num_classes": num_classes, "step": run.step, "history": run.history,
                   "final": final}
        if ctx.is_main:
            (out_dir / "downstream_cls.json").write_text(json.dumps(summary, indent=1) + "\n")
        log.info("%s on %s: top-1 %.4f after %d steps", cfg.model, data.root, final["top1"], run.step)
        return summary
    finally:
        cleanup_distributed()


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app's work (what ``main`` runs): :func:`downstream_cls`."""
    return downstream_cls(cfg)


@hydra_app("spaceevo", "downstream_cls")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
