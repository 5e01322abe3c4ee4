"""SpaceEvo's search spaces as a LitePred architecture family (LitePred, NSDI'24 §4.3: kernels "that
occur in real search spaces"), plugged into LitePred's zoo through the ``moonlit.litepred.families``
entry point ``spaceevo``.

Family ``spaceevo``: a subnet of one of SpaceEvo's supernets (ICCV'23, Table 2), built as the
supernet's static subnet (:meth:`moonlit.spaceevo.supernet.Supernet.get_active_subnet`):
``create_model("seqnet:<description>")`` of :mod:`moonlit.common.models`. Description grammar::

    <space encoding>:<subnet encoding>     e.g. onnxw-151122-023231:d1#1#2#2#2#2#2#1_k3#..._r160

(:mod:`moonlit.spaceevo.space`). Any SpaceEvo space is accepted; sampling draws only from
:data:`PUBLISHED_SPACEEVO_SPACES`: the space uniformly, then a uniform subnet of it
(:func:`moonlit.spaceevo.space.sample_subnet`, resolution included). The description carries the
resolution (``_r<res>``), so the spec's input size must equal it, and it must be written
canonically (what ``encode`` writes), so one model has one name.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
from torch import nn

from moonlit.litepred.api import ArchFamily, ArchSpec, register_family

from .space import SpaceEncoding, SubnetEncoding, check_subnet, sample_subnet

__all__ = ["PUBLISHED_SPACEEVO_SPACES", "SpaceEvoFamily", "seqnet_spec"]

# The published supernets' spaces (SpaceEvo Table 2; the reference's search_result.yaml,
# ``specific_supernet_encoding_dict``), kept here so sampling needs no data file.
PUBLISHED_SPACEEVO_SPACES: dict[str, str] = {
    "spaceevo@pixel4": "mobilew-122222-155400",
    "spaceevo@pixel4-tiny": "mobilew-332160-134200",
    "spaceevo@pixel4-medium": "mobilew-112220-154410",
    "spaceevo@vnni": "onnxw-151122-023231",
    "spaceevo@vnni-large": "onnxw-121122-133333",
}


@register_family("spaceevo")
class SpaceEvoFamily(ArchFamily):
    """Subnets of SpaceEvo supernets; description ``<space>:<subnet>`` (module docstring)."""

    @staticmethod
    def parse(description: str) -> tuple[SpaceEncoding, SubnetEncoding]:
        """The space and subnet of ``description``; ValueError naming the bad part or a non-canonical form."""
        space_text, separator, subnet_text = description.partition(":")
        if not separator:
            raise ValueError(f"spaceevo description {description!r} has no ':'; expected "
                             "'<space encoding>:<subnet encoding>', e.g. 'onnxw-151122-023231:d1#1#..._r160'")
        space = SpaceEncoding.decode(space_text)
        subnet = SubnetEncoding.decode(subnet_text)
        check_subnet(subnet, space)
        canonical = f"{space.encode()}:{subnet.encode()}"
        if description != canonical:
            raise ValueError(f"spaceevo description {description!r} is not canonical; expected {canonical!r}")
        return space, subnet

    def validate(self, description: str) -> None:
        self.parse(description)

    def label(self, description: str) -> str:
        space = description.partition(":")[0]
        return f"{space}-{hashlib.sha256(description.encode('utf-8')).hexdigest()[:12]}"

    def make_spec(self, description: str, resolution: int, num_classes: int = 1000) -> ArchSpec:
        described = self.parse(description)[1].resolution
        if described != resolution:
            raise ValueError(f"resolution {resolution} of a {self.name!r} spec differs from the resolution "
                             f"{described} its description {description!r} carries; expected {described}")
        return super().make_spec(description, resolution, num_classes)

    def spec(self, description: str, num_classes: int = 1000) -> ArchSpec:
        """The spec of ``description`` at the resolution it carries."""
        return self.make_spec(description, self.parse(description)[1].resolution, num_classes)

    def build(self, description: str, num_classes: int) -> nn.Module:
        from moonlit.common.models import create_model

        self.parse(description)
        return create_model(f"seqnet:{description}", num_classes=num_classes).eval()

    def sample_one(self, rng: random.Random) -> ArchSpec:
        space = SpaceEncoding.decode(rng.choice(list(PUBLISHED_SPACEEVO_SPACES.values())))
        subnet = sample_subnet(space, np.random.default_rng(rng.getrandbits(64)))
        return self.spec(f"{space.encode()}:{subnet.encode()}")


def seqnet_spec(name: str, search_result: str | None = None, num_classes: int = 1000) -> ArchSpec:
    """A published SEQnet (``"SEQnet@vnni-A0"``) as a ``spaceevo`` spec, read from the search-result file
    (:func:`moonlit.spaceevo.models.load_search_result`)."""
    from .models import resolve_model

    seqnet = resolve_model(name, search_result)
    return SpaceEvoFamily().spec(f"{seqnet.space.encode()}:{seqnet.subnet.encode()}", num_classes)
