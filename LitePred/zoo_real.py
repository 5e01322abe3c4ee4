"""The real SpaceEvo and ElasticViT search spaces as LitePred architecture families (NSDI'24 §4.3).

LitePred trains its kernel predictors on kernels "that occur in real search spaces". The
stand-ins of :mod:`moonlit.litepred.zoo_spaceevo_like` and :mod:`moonlit.litepred.zoo_elasticvit_like`
were written before the paper packages existed and miss kernel types the real models have
(ElasticViT's attention-bias adds, ``eltwise``, and its head BatchNorm over tokens, ``bn``). These two families draw from the spaces themselves:

- ``spaceevo``: a subnet of one of SpaceEvo's published supernets (ICCV'23, Table 2; the five
  spaces of the reference's ``search_result.yaml``), built as the supernet's static subnet
  (:meth:`moonlit.spaceevo.supernet.Supernet.get_active_subnet`, the model
  :func:`moonlit.spaceevo.models.create_seqnet` returns). Description grammar::

      <space encoding>:<subnet encoding>     e.g. onnxw-151122-023231:d1#1#2#2#2#2#2#1_k3#..._r160

  (:mod:`moonlit.spaceevo.space`). Any SpaceEvo space is accepted; sampling draws only from
  :data:`PUBLISHED_SPACEEVO_SPACES`, the space uniformly, then a uniform subnet of it
  (:func:`moonlit.spaceevo.space.sample_subnet`, resolution included).
- ``elasticvit``: a subnet of ElasticViT's space (ICCV'23, §3 and Table 1), written in
  :mod:`moonlit.elasticvit.space`'s grammar (``r128_s16d1k3_c24d2e3k3_..._t272d1m4v2``) and built
  by :func:`moonlit.elasticvit.models.build_model` (the static model the supernet extracts).
  Sampling is :func:`moonlit.elasticvit.space.random_subnet`, the sampler behind
  :func:`moonlit.elasticvit.search.sample_subnet`.

Both descriptions carry the resolution (``_r<res>``), so the spec's input size must equal it, and
both must be written canonically (what the package's ``encode`` writes), so one model has one name.
The paper packages are imported inside the methods: importing LitePred stays light. The families
are opt-in (``architectures.families=[..., spaceevo, elasticvit]``); the default training set,
:data:`moonlit.litepred.zoo.DEFAULT_FAMILY_WEIGHTS`, is unchanged.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, TypeVar

from moonlit.litepred.zoo import ArchFamily, ArchSpec, get_family, register_family
from torch import nn

if TYPE_CHECKING:
    from moonlit.elasticvit.space import Subnet
    from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding

__all__ = ["PUBLISHED_SPACEEVO_SPACES", "ElasticViTFamily", "SpaceEvoFamily", "elasticvit_spec", "seqnet_spec"]

FamilyT = TypeVar("FamilyT", bound=ArchFamily)

# The published supernets' spaces (SpaceEvo Table 2; the reference's search_result.yaml,
# ``specific_supernet_encoding_dict``), kept here so sampling needs no data file.
PUBLISHED_SPACEEVO_SPACES: dict[str, str] = {
    "spaceevo@pixel4": "mobilew-122222-155400",
    "spaceevo@pixel4-tiny": "mobilew-332160-134200",
    "spaceevo@pixel4-medium": "mobilew-112220-154410",
    "spaceevo@vnni": "onnxw-151122-023231",
    "spaceevo@vnni-large": "onnxw-121122-133333",
}


def _check_resolution(family: str, description: str, described: int, resolution: int) -> None:
    if described != resolution:
        raise ValueError(f"resolution {resolution} of a {family!r} spec differs from the resolution {described} its "
                         f"description {description!r} carries; expected {described}")


def _family(name: str, expected: type[FamilyT]) -> FamilyT:
    family = get_family(name)
    if not isinstance(family, expected):
        raise TypeError(f"family {name!r} is a {type(family).__name__}, expected {expected.__name__}")
    return family


# ------------------------------------------------------------------------------------- spaceevo
@register_family("spaceevo")
class SpaceEvoFamily(ArchFamily):
    """Subnets of SpaceEvo supernets; description ``<space>:<subnet>`` (module docstring)."""

    @staticmethod
    def parse(description: str) -> tuple[SpaceEncoding, SubnetEncoding]:
        """The space and subnet of ``description``; ValueError naming the bad part or a non-canonical form."""
        from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding, check_subnet

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
        _, subnet = self.parse(description)
        _check_resolution(self.name, description, subnet.resolution, resolution)
        return super().make_spec(description, resolution, num_classes)

    def spec(self, description: str, num_classes: int = 1000) -> ArchSpec:
        """The spec of ``description`` at the resolution it carries."""
        return self.make_spec(description, self.parse(description)[1].resolution, num_classes)

    def build(self, description: str, num_classes: int) -> nn.Module:
        from moonlit.spaceevo.supernet import Supernet

        space, subnet = self.parse(description)
        supernet = Supernet(space, num_classes=num_classes, resolutions=[subnet.resolution])
        supernet.set_active(subnet)
        return supernet.get_active_subnet().eval()

    def sample_one(self, rng: random.Random) -> ArchSpec:
        import numpy as np
        from moonlit.spaceevo.space import SpaceEncoding, sample_subnet

        space = SpaceEncoding.decode(rng.choice(list(PUBLISHED_SPACEEVO_SPACES.values())))
        subnet = sample_subnet(space, np.random.default_rng(rng.getrandbits(64)))
        return self.spec(f"{space.encode()}:{subnet.encode()}")


def seqnet_spec(name: str, search_result: str | None = None, num_classes: int = 1000) -> ArchSpec:
    """A published SEQnet (``"SEQnet@vnni-A0"``) as a ``spaceevo`` spec, read from the search-result file
    (:func:`moonlit.spaceevo.models.load_search_result`)."""
    from moonlit.spaceevo.models import resolve_model

    seqnet = resolve_model(name, search_result)
    return _family("spaceevo", SpaceEvoFamily).spec(f"{seqnet.space.encode()}:{seqnet.subnet.encode()}", num_classes)


# ----------------------------------------------------------------------------------- elasticvit
@register_family("elasticvit")
class ElasticViTFamily(ArchFamily):
    """Subnets of ElasticViT's space; description = the subnet encoding (module docstring)."""

    @staticmethod
    def parse(description: str) -> Subnet:
        """The subnet of ``description``; ValueError naming the bad part or a non-canonical form."""
        from moonlit.elasticvit.space import decode, encode

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
        _check_resolution(self.name, description, self.parse(description).resolution, resolution)
        return super().make_spec(description, resolution, num_classes)

    def spec(self, description: str, num_classes: int = 1000) -> ArchSpec:
        """The spec of ``description`` at the resolution it carries."""
        return self.make_spec(description, self.parse(description).resolution, num_classes)

    def build(self, description: str, num_classes: int) -> nn.Module:
        from moonlit.elasticvit.models import build_model

        return build_model(self.parse(description), num_classes=num_classes).eval()

    def sample_one(self, rng: random.Random) -> ArchSpec:
        from moonlit.elasticvit.space import encode, random_subnet

        return self.spec(encode(random_subnet(rng)))


def elasticvit_spec(name_or_encoding: str, num_classes: int = 1000) -> ArchSpec:
    """A named ElasticViT model (``"T1"``, ``"elasticvit_l1_5"``) or a subnet encoding as an ``elasticvit`` spec."""
    from moonlit.elasticvit.models import named_subnet
    from moonlit.elasticvit.space import encode

    try:
        encoding = encode(named_subnet(name_or_encoding))
    except ValueError:
        encoding = name_or_encoding
    return _family("elasticvit", ElasticViTFamily).spec(encoding, num_classes)
