"""SpaceEvo's LitePred architecture family (moonlit.spaceevo.litepred_family), plugged in by entry point.

Expected values come from outside the family code: the reference's search_result.yaml (read raw
with yaml), the SpaceEvo fact that each A0 SEQnet is its space's minimum subnet, hand counts of
kernels from the block types (onnxw.yaml), torch's FLOP counter (MACs) against the kernel
detector's sum, and the package's own model constructor.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
import yaml

from moonlit.common.models import create_model
from moonlit.litepred import testing
from moonlit.spaceevo.litepred_family import PUBLISHED_SPACEEVO_SPACES, SpaceEvoFamily, seqnet_spec
from moonlit.spaceevo.models import resolve_search_result
from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding, check_subnet, min_subnet

# SEQnet@vnni-A0 as the reference's search_result.yaml writes it, prefixed with its space (spaceevo@vnni).
VNNI_A0 = ("onnxw-151122-023231:d1#1#2#2#2#2#2#1_k3#3#3#3#3#3#3#3#3#3#3#3#3_w16#16#32#32#64#64#112#112#144#144#240#240"
           "#320_e0#0.5#4.0#4.0#1.0#1.0#4.0#4.0#4.0#4.0#4.0#4.0#4.0_r160")


def _search_result() -> dict:
    return yaml.safe_load(resolve_search_result().read_text())


def test_the_family_keeps_the_zoo_contract() -> None:
    # registration, seeded sampling, disjoint train/held-out split, a small build (moonlit.litepred.testing)
    testing.check_family("spaceevo", "moonlit.spaceevo.litepred_family", SpaceEvoFamily)


def test_published_spaces_match_the_search_result_file() -> None:
    assert PUBLISHED_SPACEEVO_SPACES == _search_result()["specific_supernet_encoding_dict"]


def test_samples_are_subnets_of_the_published_spaces() -> None:
    specs = testing.sample("spaceevo", 150, seed=2)
    spaces: Counter[str] = Counter()
    for spec in specs:
        space_text, subnet_text = spec.description.split(":")
        space, subnet = SpaceEncoding.decode(space_text), SubnetEncoding.decode(subnet_text)
        check_subnet(subnet, space)
        assert spec.input_size == (3, subnet.resolution, subnet.resolution)
        assert re.fullmatch(rf"spaceevo/{space_text}-[0-9a-f]{{12}}@{subnet.resolution}", spec.name)
        spaces[space_text] += 1
    assert set(spaces) == set(PUBLISHED_SPACEEVO_SPACES.values())  # uniform over 5: each ~30 of 150
    assert {spec.resolution for spec in specs} == {160, 176, 192, 208, 224}


@pytest.mark.parametrize("description, resolution, message", [
    (VNNI_A0.split(":")[0], 160, "has no ':'"),
    (VNNI_A0.replace("onnxw-151122-023231", "151122_023231"), 160, "names no hyperspace"),
    (VNNI_A0.replace("4.0", "4"), 160, "entry 2 '4' of field 'e0#.*is not an expand ratio"),
    (VNNI_A0, 224, "resolution 224 .* carries"),
    (VNNI_A0.replace("_r160", "_r96"), 96, "resolution 96 is not one of"),
    (VNNI_A0.replace("_k3#", "_k4#", 1), 160, "kernel 4 of block 0 of first_conv"),
])
def test_bad_descriptions_name_the_bad_part(description: str, resolution: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        testing.get_family("spaceevo").make_spec(description, resolution)


def test_named_seqnets_are_specs_of_the_family() -> None:
    raw = _search_result()
    for name in ("SEQnet@vnni-A0", "SEQnet@pixel4-A4"):
        supernet, subnet = raw["specific_subnet_encoding_dict"][name]
        space = raw["specific_supernet_encoding_dict"][supernet]
        spec = seqnet_spec(name)
        assert spec.family == "spaceevo" and spec.description == f"{space}:{subnet}"
        assert spec.resolution == int(subnet.rsplit("_r", 1)[1])
        assert testing.resolve_spec(f"spaceevo:{spec.description}@{spec.resolution}") == spec
    a0 = seqnet_spec("SEQnet@vnni-A0")  # an A0 SEQnet is its space's minimum subnet
    space = SpaceEncoding.decode("onnxw-151122-023231")
    assert a0.description == f"{space}:{min_subnet(space, resolution=160).encode()}"


def test_built_models_run_and_match_the_packages_constructor() -> None:
    testing.check_build(seqnet_spec("SEQnet@vnni-A0"), create_model("SEQnet@vnni-A0"))


def test_family_build_has_the_seeded_weights_of_the_supernet_cut() -> None:
    from moonlit.spaceevo.supernet import Supernet

    spec = seqnet_spec("SEQnet@vnni-A0")
    space, subnet = SpaceEvoFamily.parse(spec.description)
    torch.manual_seed(9)
    ours = SpaceEvoFamily().build(spec.description, num_classes=7).state_dict()
    torch.manual_seed(9)
    supernet = Supernet(space, num_classes=7, resolutions=[subnet.resolution])
    supernet.set_active(subnet)
    theirs = supernet.get_active_subnet().state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_kernels_are_known_and_add_up() -> None:
    spec = seqnet_spec("SEQnet@vnni-A0")
    counts = testing.check_kernels(spec, "ort-fp32")  # all detected, MACs = torch's count
    # onnxw-151122-023231, depths 1,1,2,2,2,2,2,1: depthwise convs in the MobileNetV2Res stages 1, 3, 4
    # and MobileNetV3Res stages 5, 6 (2+2+2+2+1); SE only in the MobileNetV3Res blocks (2+1); BN is
    # folded into every conv, so no bn and no eltwise kernel.
    assert counts["dwconv"] == 9 and counts["se"] == 3 and counts["fc"] == 1 and counts["gap"] == 1
    assert "bn" not in counts and "eltwise" not in counts
