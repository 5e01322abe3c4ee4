"""The ``timm-mobile`` family of LitePred's model zoo (NSDI'24, §6: the held-out "timm mobile models").

The named timm mobile models (MobileNetV2/V3, EfficientNet, MnasNet, FBNet, GhostNet, LeViT,
MobileViT) with random weights, each at 224 and, for some fully convolutional ones, at extra
resolutions; the description is the timm model name. The family is held out for evaluation only.
"""

from __future__ import annotations

import timm
from torch import nn

from moonlit.litepred.zoo import ArchFamily, ArchSpec, register_family

__all__ = ["TIMM_MOBILE_MODELS"]

# Present in timm 1.0.3 and 1.0.31, all export to ONNX opset 17 (tests/litepred/test_zoo.py).
TIMM_MOBILE_MODELS: tuple[str, ...] = (
    "mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140", "mobilenetv3_small_100",
    "mobilenetv3_large_075", "mobilenetv3_large_100", "efficientnet_b0", "efficientnet_b1",
    "efficientnet_lite0", "mnasnet_100", "fbnetc_100", "ghostnet_100", "levit_128s", "levit_128",
    "mobilevit_xxs", "mobilevit_xs",
)
# Extra resolutions for fully convolutional models (LeViT's attention biases fix it at 224).
_TIMM_EXTRA_RESOLUTIONS: dict[str, tuple[int, ...]] = {
    "mobilenetv2_100": (160, 192), "mobilenetv3_large_100": (160, 192),
    "mobilenetv3_small_100": (160,), "efficientnet_b0": (192,), "mnasnet_100": (192,),
}


@register_family("timm-mobile")
class TimmMobile(ArchFamily):
    """Fixed timm models (``timm.create_model(name, pretrained=False)``); description = model name."""

    heldout_only = True

    def validate(self, description: str) -> None:
        if not timm.is_model(description):
            raise ValueError(f"{description!r} is not a timm model name (timm {timm.__version__})")

    def label(self, description: str) -> str:
        return description

    def build(self, description: str, num_classes: int) -> nn.Module:
        self.validate(description)
        return timm.create_model(description, pretrained=False, num_classes=num_classes)

    def fixed_specs(self) -> list[ArchSpec]:
        return [self.make_spec(model, resolution) for model in TIMM_MOBILE_MODELS
                for resolution in (224, *_TIMM_EXTRA_RESOLUTIONS.get(model, ()))]
