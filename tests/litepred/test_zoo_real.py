"""Tests of the real SpaceEvo / ElasticViT zoo families (moonlit.litepred.zoo_real).

Expected values come from outside the family code: the reference's search_result.yaml (read raw
with yaml), the ElasticViT reference eval config's T1 list, the SpaceEvo fact that each A0 SEQnet
is its space's minimum subnet, hand counts of kernels from the block types (onnxw.yaml) and the
ElasticViT stage depths, torch's FLOP counter (MACs) against the kernel detector's sum, and the
paper packages' own model constructors.
"""

from __future__ import annotations

import random
import re
import warnings
from collections import Counter

import pytest
import torch
import yaml
from moonlit.common.config import compose_config
from moonlit.common.profiling.flops import count_macs
from moonlit.litepred import zoo
from moonlit.litepred.kernels import load_platform_rules
from moonlit.litepred.pipeline import detect_architecture
from moonlit.litepred.zoo_real import (
    PUBLISHED_SPACEEVO_SPACES,
    elasticvit_spec,
    seqnet_spec,
)

REAL = ["spaceevo", "elasticvit"]
STAND_INS = {"spaceevo-like", "elasticvit-like", "resnet-like"}
# ElasticViT-T1 from the reference's configs/final_3min_space_eval.yaml (10-list layout), written in
# our grammar by hand: res 128; channels 16,24,32,64,96,176,272; depths 1,2,3,1,1,1,1; conv ratios
# 1 | 3,3 | 3,3,3; kernels all 3; mlp ratios 2,2,3,4; v scales 2.
# SEQnet@vnni-A0 as the reference's search_result.yaml writes it, prefixed with its space (spaceevo@vnni).
VNNI_A0 = ("onnxw-151122-023231:d1#1#2#2#2#2#2#1_k3#3#3#3#3#3#3#3#3#3#3#3#3_w16#16#32#32#64#64#112#112#144#144#240#240"
           "#320_e0#0.5#4.0#4.0#1.0#1.0#4.0#4.0#4.0#4.0#4.0#4.0#4.0_r160")
T1 = "r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2"


def _content(spec: zoo.ArchSpec) -> tuple:
    return spec.family, spec.description, spec.input_size


def _search_result() -> dict:
    from moonlit.spaceevo.models import resolve_search_result

    return yaml.safe_load(resolve_search_result().read_text())


# ------------------------------------------------------------------ registry, sampling, held-out
def test_real_families_are_registered_and_in_the_default_build() -> None:
    assert set(zoo.list_families()) >= {*REAL, *STAND_INS, "timm-mobile"}
    assert set(zoo.DEFAULT_FAMILY_WEIGHTS) == STAND_INS
    assert {spec.family for spec in zoo.training_architectures(30)} <= STAND_INS
    assert {spec.family for spec in zoo.heldout_architectures(40)} <= STAND_INS | {"timm-mobile"}
    from moonlit.litepred.cli import _training_specs

    # the build's default: code defaults (stand-ins) stay for held-out sets, the config adds the real spaces
    default = compose_config("litepred", "litepred", ["architectures.train=10", "architectures.calibration=5"])
    assert list(default.architectures.families) == ["spaceevo-like", "elasticvit-like", "resnet-like", "spaceevo",
                                                    "elasticvit"]
    assert Counter(spec.family for spec in _training_specs(default)) == Counter(
        {"spaceevo-like": 2, "elasticvit-like": 2, "resnet-like": 2, "spaceevo": 2, "elasticvit": 2})


def test_published_spaces_match_the_search_result_file() -> None:
    assert PUBLISHED_SPACEEVO_SPACES == _search_result()["specific_supernet_encoding_dict"]


@pytest.mark.parametrize("family", REAL)
def test_sampling_is_deterministic_in_the_seed(family: str) -> None:
    first = zoo.sample(family, 12, seed=4)
    assert first == zoo.sample(family, 12, seed=4)
    assert len({s.name for s in first}) == 12 and len({_content(s) for s in first}) == 12
    assert not {s.name for s in first} & {s.name for s in zoo.sample(family, 12, seed=5)}
    # a family's draws do not depend on the other families sampled with it
    mixed = zoo.sample_architectures(24, seed=4, families=["resnet-like", family])
    assert [s for s in mixed if s.family == family] == first


def test_training_and_heldout_specs_are_disjoint() -> None:
    training = zoo.training_architectures(160, seed=1, families=REAL)
    heldout = zoo.heldout_architectures(80, seed=7, families=REAL)
    assert Counter(s.family for s in heldout) == {"spaceevo": 40, "elasticvit": 40}
    assert not {s.name for s in training} & {s.name for s in heldout}
    assert not {_content(s) for s in training} & {_content(s) for s in heldout}
    assert all(zoo.is_heldout(s) for s in heldout) and not any(zoo.is_heldout(s) for s in training)
    for family in REAL:  # the hash rule holds out about a quarter of each real space
        pool = zoo.sample(family, 400, seed=11)
        assert 0.18 < sum(map(zoo.is_heldout, pool)) / len(pool) < 0.32


def test_spaceevo_samples_are_subnets_of_the_published_spaces() -> None:
    from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding, check_subnet

    specs = zoo.sample("spaceevo", 150, seed=2)
    spaces = Counter()
    for spec in specs:
        space_text, subnet_text = spec.description.split(":")
        space, subnet = SpaceEncoding.decode(space_text), SubnetEncoding.decode(subnet_text)
        check_subnet(subnet, space)
        assert spec.input_size == (3, subnet.resolution, subnet.resolution)
        assert re.fullmatch(rf"spaceevo/{space_text}-[0-9a-f]{{12}}@{subnet.resolution}", spec.name)
        spaces[space_text] += 1
    assert set(spaces) == set(PUBLISHED_SPACEEVO_SPACES.values())  # uniform over 5: each ~30 of 150
    assert {spec.resolution for spec in specs} == {160, 176, 192, 208, 224}


def test_elasticvit_samples_cover_the_space() -> None:
    from moonlit.elasticvit.space import ELASTICVIT_SPACE, decode

    specs = zoo.sample("elasticvit", 150, seed=2)
    for spec in specs:
        subnet = decode(spec.description)
        assert spec.input_size == (3, subnet.resolution, subnet.resolution)
        assert spec.name == f"elasticvit/{spec.description.split('_', 1)[1]}@{subnet.resolution}"
        assert list(subnet.widths) == sorted(subnet.widths)  # widths never decrease
    assert {spec.resolution for spec in specs} == set(ELASTICVIT_SPACE.resolutions)


# ------------------------------------------------------------------------- grammar and named models
@pytest.mark.parametrize("family, description, resolution, message", [
    ("spaceevo", VNNI_A0.split(":")[0], 160, "has no ':'"),
    ("spaceevo", VNNI_A0.replace("onnxw-151122-023231", "151122_023231"), 160, "names no hyperspace"),
    ("spaceevo", VNNI_A0.replace("4.0", "4"), 160, "entry 2 '4' of field 'e0#.*is not an expand ratio"),
    ("spaceevo", VNNI_A0, 224, "resolution 224 .* carries"),
    ("spaceevo", VNNI_A0.replace("_r160", "_r96"), 96, "resolution 96 is not one of"),
    ("spaceevo", VNNI_A0.replace("_k3#", "_k4#", 1), 160, "kernel 4 of block 0 of first_conv"),
    ("elasticvit", T1.replace("t64d1", "t60d1"), 128, "width of T1 60"),
    ("elasticvit", T1, 160, "resolution 160 .* carries"),
    ("elasticvit", T1.replace("c24d2e3k3", "c24d02e3k3"), 128, "depth '02' in part 'c24d02e3k3' .* leading zero"),
])
def test_bad_descriptions_name_the_bad_part(family: str, description: str, resolution: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        zoo.get_family(family).make_spec(description, resolution)


def test_named_models_are_specs_of_the_families() -> None:
    from moonlit.litepred.cli import resolve_spec
    from moonlit.spaceevo.space import SpaceEncoding, min_subnet

    raw = _search_result()
    for name in ("SEQnet@vnni-A0", "SEQnet@pixel4-A4"):
        supernet, subnet = raw["specific_subnet_encoding_dict"][name]
        space = raw["specific_supernet_encoding_dict"][supernet]
        spec = seqnet_spec(name)
        assert spec.family == "spaceevo" and spec.description == f"{space}:{subnet}"
        assert spec.resolution == int(subnet.rsplit("_r", 1)[1])
        assert resolve_spec(f"spaceevo:{spec.description}@{spec.resolution}") == spec
    a0 = seqnet_spec("SEQnet@vnni-A0")  # an A0 SEQnet is its space's minimum subnet
    space = SpaceEncoding.decode("onnxw-151122-023231")
    assert a0.description == f"{space}:{min_subnet(space, resolution=160).encode()}"
    t1 = elasticvit_spec("T1")
    assert (t1.family, t1.description, t1.input_size) == ("elasticvit", T1, (3, 128, 128))
    assert elasticvit_spec("elastic_T1") == elasticvit_spec(T1) == t1
    assert resolve_spec(f"elasticvit:{T1}@128") == t1


# ------------------------------------------------------------------------------- built models
def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(x)


def test_built_models_run_and_match_the_packages_constructors() -> None:
    from moonlit.elasticvit.models import create_model
    from moonlit.spaceevo.models import create_seqnet

    for spec, reference in ((seqnet_spec("SEQnet@vnni-A0"), create_seqnet("SEQnet@vnni-A0")),
                            (elasticvit_spec("T1"), create_model("T1"))):
        model = spec.build()
        assert not model.training
        assert {k: v.shape for k, v in model.state_dict().items()} == {
            k: v.shape for k, v in reference.state_dict().items()}
        x = spec.example_input(batch_size=2)
        out = _forward(model, x)
        assert out.shape == (2, 1000) and torch.isfinite(out).all()
        assert torch.equal(out, _forward(spec.build(), x))  # the name seeds the weights
    rng = random.Random(0)
    for family in REAL:
        sampled = min(zoo.sample(family, 6, seed=3), key=lambda s: s.resolution)
        spec = zoo.get_family(family).make_spec(sampled.description, sampled.resolution, num_classes=10)
        assert _forward(spec.build(), spec.example_input(seed=rng.randrange(9))).shape == (1, 10)


# ---------------------------------------------------------------------------- kernel detection
def _rule_kernel_types() -> set[str]:
    return {rule.kernel for rule in load_platform_rules("ort-fp32").rules}


def test_elasticvit_kernels_include_the_attention_bias_and_head_bn() -> None:
    from moonlit.elasticvit.space import decode

    sampled = min(zoo.sample("elasticvit", 5, seed=8), key=lambda s: s.resolution)
    for spec in (elasticvit_spec("T1"), sampled):
        detection = detect_architecture(spec, "ort-fp32")
        counts = Counter(config.type for config in detection.configs())
        attention_layers = sum(stage.depth for stage in decode(spec.description).transformer_stages)
        # one attention-bias add and one softmax per attention layer, one BN over tokens in the head
        assert counts["eltwise"] == counts["softmax"] == attention_layers
        assert counts["bn"] == 1
        assert set(counts) <= _rule_kernel_types() and not detection.unassigned
        assert detection.summary()["macs"] == count_macs(spec.build(), spec.example_input()).macs


def test_spaceevo_kernels_are_known_and_add_up() -> None:
    detection = detect_architecture(seqnet_spec("SEQnet@vnni-A0"), "ort-fp32")
    counts = Counter(config.type for config in detection.configs())
    # onnxw-151122-023231, depths 1,1,2,2,2,2,2,1: depthwise convs in the MobileNetV2Res stages 1, 3, 4
    # and MobileNetV3Res stages 5, 6 (2+2+2+2+1); SE only in the MobileNetV3Res blocks (2+1); BN is
    # folded into every conv, so no bn and no eltwise kernel.
    assert counts["dwconv"] == 9 and counts["se"] == 3 and counts["fc"] == 1 and counts["gap"] == 1
    assert counts["bn"] == counts["eltwise"] == 0
    assert set(counts) <= _rule_kernel_types() and not detection.unassigned
    spec = seqnet_spec("SEQnet@vnni-A0")
    assert detection.summary()["macs"] == count_macs(spec.build(), spec.example_input()).macs
