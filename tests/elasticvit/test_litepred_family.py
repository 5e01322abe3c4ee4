"""ElasticViT's LitePred architecture family (moonlit.elasticvit.litepred_family), plugged in by entry point.

Expected values come from outside the family code: the ElasticViT reference eval config's T1 list
(written in our grammar by hand), the stage depths (one attention-bias add and one softmax per
attention layer), torch's FLOP counter (MACs) against the kernel detector's sum, and the package's
own model constructor.
"""

from __future__ import annotations

import pytest
import torch

from moonlit.common.models import create_model
from moonlit.elasticvit.litepred_family import ElasticViTFamily, elasticvit_spec
from moonlit.elasticvit.models import named_subnet
from moonlit.elasticvit.space import ELASTICVIT_SPACE, decode, encode
from moonlit.litepred import testing

# ElasticViT-T1 from the reference's configs/final_3min_space_eval.yaml (10-list layout), written in
# our grammar by hand: res 128; channels 16,24,32,64,96,176,272; depths 1,2,3,1,1,1,1; conv ratios
# 1 | 3,3 | 3,3,3; kernels all 3; mlp ratios 2,2,3,4; v scales 2.
T1 = "r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2"


def test_the_family_keeps_the_zoo_contract() -> None:
    # registration, seeded sampling, disjoint train/held-out split, a small build (moonlit.litepred.testing)
    testing.check_family("elasticvit", "moonlit.elasticvit.litepred_family", ElasticViTFamily)


def test_samples_cover_the_space() -> None:
    specs = testing.sample("elasticvit", 150, seed=2)
    for spec in specs:
        subnet = decode(spec.description)
        assert spec.input_size == (3, subnet.resolution, subnet.resolution)
        assert spec.name == f"elasticvit/{spec.description.split('_', 1)[1]}@{subnet.resolution}"
        assert list(subnet.widths) == sorted(subnet.widths)  # widths never decrease
    assert {spec.resolution for spec in specs} == set(ELASTICVIT_SPACE.resolutions)


@pytest.mark.parametrize("description, resolution, message", [
    (T1.replace("t64d1", "t60d1"), 128, "width of T1 60"),
    (T1, 160, "resolution 160 .* carries"),
    (T1.replace("c24d2e3k3", "c24d02e3k3"), 128, "depth '02' in part 'c24d02e3k3' .* leading zero"),
])
def test_bad_descriptions_name_the_bad_part(description: str, resolution: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        testing.get_family("elasticvit").make_spec(description, resolution)


def test_named_models_are_specs_of_the_family() -> None:
    t1 = elasticvit_spec("T1")
    assert (t1.family, t1.description, t1.input_size) == ("elasticvit", T1, (3, 128, 128))
    assert elasticvit_spec("elastic_T1") == elasticvit_spec(T1) == t1
    assert testing.resolve_spec(f"elasticvit:{T1}@128") == t1


def test_built_models_run_and_match_the_packages_constructor() -> None:
    testing.check_build(elasticvit_spec("T1"), create_model("T1"))


def test_family_build_has_the_seeded_weights_of_the_constructor() -> None:
    from moonlit.elasticvit.models import build_model

    description = encode(named_subnet("T1"))
    torch.manual_seed(9)
    ours = ElasticViTFamily().build(description, num_classes=7).state_dict()
    torch.manual_seed(9)
    theirs = build_model(decode(description), num_classes=7).state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_kernels_include_the_attention_bias_and_head_bn() -> None:
    sampled = min(testing.sample("elasticvit", 5, seed=8), key=lambda s: s.resolution)
    for spec in (elasticvit_spec("T1"), sampled):
        counts = testing.check_kernels(spec, "ort-fp32")  # all detected, MACs = torch's count
        attention_layers = sum(stage.depth for stage in decode(spec.description).transformer_stages)
        # one attention-bias add and one softmax per attention layer, one BN over tokens in the head
        assert counts["eltwise"] == counts["softmax"] == attention_layers
        assert counts["bn"] == 1
