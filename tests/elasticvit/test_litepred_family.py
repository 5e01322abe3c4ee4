"""ElasticViT's LitePred architecture family (moonlit.elasticvit.litepred_family), plugged in by entry point.

Expected values come from outside the family code: the ElasticViT reference eval config's T1 list
(written in our grammar by hand), the stage depths (one attention-bias add and one softmax per
attention layer), torch's FLOP counter (MACs) against the kernel detector's sum, and the package's
own model constructor.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter

import pytest
import torch

from moonlit.common.models import create_model
from moonlit.common.profiling.flops import count_macs
from moonlit.elasticvit.litepred_family import ElasticViTFamily, elasticvit_spec
from moonlit.elasticvit.models import named_subnet
from moonlit.elasticvit.space import ELASTICVIT_SPACE, decode, encode
from moonlit.litepred import testing

# ElasticViT-T1 from the reference's configs/final_3min_space_eval.yaml (10-list layout), written in
# our grammar by hand: res 128; channels 16,24,32,64,96,176,272; depths 1,2,3,1,1,1,1; conv ratios
# 1 | 3,3 | 3,3,3; kernels all 3; mlp ratios 2,2,3,4; v scales 2.
T1 = "r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2"


def _content(spec) -> tuple:
    return spec.family, spec.description, spec.input_size


def test_the_entry_point_registers_the_family() -> None:
    assert testing.plugins()["elasticvit"] == "moonlit.elasticvit.litepred_family"
    assert "elasticvit" in testing.list_families()
    assert isinstance(testing.get_family("elasticvit"), ElasticViTFamily)


def test_sampling_is_deterministic_in_the_seed() -> None:
    first = testing.sample("elasticvit", 12, seed=4)
    assert first == testing.sample("elasticvit", 12, seed=4)
    assert len({s.name for s in first}) == 12 and len({_content(s) for s in first}) == 12
    assert not {s.name for s in first} & {s.name for s in testing.sample("elasticvit", 12, seed=5)}
    mixed = testing.sample_architectures(24, seed=4, families=["resnet-like", "elasticvit"])
    assert [s for s in mixed if s.family == "elasticvit"] == first


def test_training_and_heldout_specs_are_disjoint() -> None:
    training = testing.training_architectures(80, seed=1, families=["elasticvit"])
    heldout = testing.heldout_architectures(40, seed=7, families=["elasticvit"])
    assert Counter(s.family for s in heldout) == {"elasticvit": 40}
    assert not {s.name for s in training} & {s.name for s in heldout}
    assert not {_content(s) for s in training} & {_content(s) for s in heldout}
    assert all(map(testing.is_heldout, heldout)) and not any(map(testing.is_heldout, training))
    pool = testing.sample("elasticvit", 400, seed=11)  # the hash rule holds out about a quarter of the space
    assert 0.18 < sum(map(testing.is_heldout, pool)) / len(pool) < 0.32


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


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(x)


def test_built_models_run_and_match_the_packages_constructor() -> None:
    spec, reference = elasticvit_spec("T1"), create_model("T1")
    model = spec.build()
    assert not model.training
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    x = spec.example_input(batch_size=2)
    out = _forward(model, x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert torch.equal(out, _forward(spec.build(), x))  # the name seeds the weights
    sampled = min(testing.sample("elasticvit", 6, seed=3), key=lambda s: s.resolution)
    small = testing.get_family("elasticvit").make_spec(sampled.description, sampled.resolution, num_classes=10)
    assert _forward(small.build(), small.example_input(seed=random.Random(0).randrange(9))).shape == (1, 10)


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
        summary = testing.kernel_summary(spec, "ort-fp32")
        counts = Counter(summary["by_type"])
        attention_layers = sum(stage.depth for stage in decode(spec.description).transformer_stages)
        # one attention-bias add and one softmax per attention layer, one BN over tokens in the head
        assert counts["eltwise"] == counts["softmax"] == attention_layers
        assert counts["bn"] == 1
        assert set(counts) <= testing.rule_kernel_types("ort-fp32") and summary["unassigned_nodes"] == 0
        assert summary["macs"] == count_macs(spec.build(), spec.example_input()).macs
