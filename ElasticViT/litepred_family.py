"""ElasticViT's search space as a LitePred architecture family (LitePred, NSDI'24 §4.3: kernels "that
occur in real search spaces"), plugged into LitePred's zoo through the ``moonlit.litepred.families``
entry point ``elasticvit``.

Family ``elasticvit``: a subnet of ElasticViT's space (ICCV'23, §3 and Table 1), written in
:mod:`moonlit.elasticvit.space`'s grammar (``r128_s16d1k3_c24d2e3k3_..._t272d1m4v2``) and built by
``create_model("elasticvit:<description>")`` of :mod:`moonlit.common.models` (the static model the
supernet extracts). Sampling is
:func:`moonlit.elasticvit.space.random_subnet`, the sampler behind
:func:`moonlit.elasticvit.space.sample_subnet`. The description carries the resolution
(``_r<res>``), so the spec's input size must equal it, and it must be written canonically (what
``encode`` writes), so one model has one name.
"""

from __future__ import annotations

import random

from torch import nn

from moonlit.litepred.api import ArchFamily, ArchSpec, register_family

from .space import Subnet, decode, encode, random_subnet

__all__ = ["ElasticViTFamily", "elasticvit_spec"]


@register_family("elasticvit")
class ElasticViTFamily(ArchFamily):
    """Subnets of ElasticViT's space; description = the subnet encoding (module docstring)."""

    @staticmethod
    def parse(description: str) -> Subnet:
        """The subnet of ``description``; ValueError naming the bad part or a non-canonical form."""
        subnet = decode(description)
        if encode(subnet) != description:
            raise ValueError(f"elasticvit description {description!r} is not canonical; expected {encode(subnet)!r}")
        return subnet

    def validate(self, description: str) -> None:
        self.parse(description)

    def label(self, description: str) -> str:
        # the encoding is filename-safe; its resolution part repeats the name's "@<res>"
        return description.partition("_")[2]

    def make_spec(self, description: str, resolution: int, num_classes: int = 1000) -> ArchSpec:
        described = self.parse(description).resolution
        if described != resolution:
            raise ValueError(f"resolution {resolution} of a {self.name!r} spec differs from the resolution "
                             f"{described} its description {description!r} carries; expected {described}")
        return super().make_spec(description, resolution, num_classes)

    def spec(self, description: str, num_classes: int = 1000) -> ArchSpec:
        """The spec of ``description`` at the resolution it carries."""
        return self.make_spec(description, self.parse(description).resolution, num_classes)

    def build(self, description: str, num_classes: int) -> nn.Module:
        from moonlit.common.models import create_model

        self.parse(description)
        return create_model(f"elasticvit:{description}", num_classes=num_classes).eval()

    def sample_one(self, rng: random.Random) -> ArchSpec:
        return self.spec(encode(random_subnet(rng)))


def elasticvit_spec(name_or_encoding: str, num_classes: int = 1000) -> ArchSpec:
    """A named ElasticViT model (``"T1"``, ``"elasticvit_l1_5"``) or a subnet encoding as an ``elasticvit`` spec."""
    from .models import named_subnet

    try:
        encoding = encode(named_subnet(name_or_encoding))
    except ValueError:
        encoding = name_or_encoding
    return ElasticViTFamily().spec(encoding, num_classes)
