"""Tests of the LitePred model zoo: registry, sampling, partitions, builds, ONNX export, MACs.

Expected values come from outside the zoo: timm's own models (bit-exact rebuilds through the
spaceevo-like grammar), torchvision's ResNet-18/34, published MAC counts, a hand MAC formula
for the elasticvit-like hybrid, and onnxruntime for the exported graphs.
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision

from moonlit.common.export.onnx import export_onnx
from moonlit.common.profiling.flops import count_macs
from moonlit.litepred import zoo
from moonlit.litepred.zoo.elasticvit_like import ElasticViTLike, ElasticViTLikeArch
from moonlit.litepred.zoo.resnet_like import ResNetLike, ResNetLikeArch
from moonlit.litepred.zoo.spaceevo_like import MOBILEW_STAGES, SpaceEvoLikeArch
from moonlit.litepred.zoo.timm_mobile import TIMM_MOBILE_MODELS

SAMPLED = ["spaceevo-like", "elasticvit-like", "resnet-like"]
MOBILENETV2_100 = ("stem32_nr6/ds_r1_k3_s1_c16/ir_r2_k3_s2_e6_c24/ir_r3_k3_s2_e6_c32/ir_r4_k3_s2_e6_c64/"
                   "ir_r3_k3_s1_e6_c96/ir_r3_k3_s2_e6_c160/ir_r1_k3_s1_e6_c320/head1280")
EFFICIENTNET_B0 = ("stem32_nsw/ds_r1_k3_s1_c16_se0.25/ir_r2_k3_s2_e6_c24_se0.25/ir_r2_k5_s2_e6_c40_se0.25/"
                   "ir_r3_k3_s2_e6_c80_se0.25/ir_r3_k5_s1_e6_c112_se0.25/ir_r4_k5_s2_e6_c192_se0.25/"
                   "ir_r1_k3_s1_e6_c320_se0.25/head1280")


def _content(spec: zoo.ArchSpec) -> tuple:
    return spec.family, spec.description, spec.input_size


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------------- registry and sampling
def test_builtin_families_are_registered() -> None:
    assert set(zoo.list_families()) >= {"timm-mobile", *SAMPLED}
    with pytest.raises(ValueError, match="unknown architecture family 'nope'"):
        zoo.get_family("nope")


def test_register_family_plugs_in_and_rejects_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo, "_FAMILIES", dict(zoo._FAMILIES))

    @zoo.register_family("tiny-test")
    class Tiny(zoo.ArchFamily):
        def build(self, description: str, num_classes: int) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, num_classes))

        def sample_one(self, rng: random.Random) -> zoo.ArchSpec:
            return self.make_spec(f"linear{rng.randrange(10)}", 4)

    specs = zoo.sample("tiny-test", 10, seed=0)
    assert sorted(spec.description for spec in specs) == [f"linear{i}" for i in range(10)]
    assert _forward(specs[0].build(), specs[0].example_input()).shape == (1, 1000)
    with pytest.raises(ValueError, match="only 10 distinct"):
        zoo.sample("tiny-test", 11, seed=0)
    with pytest.raises(ValueError, match="already registered"):
        zoo.register_family("tiny-test")(Tiny)


def test_the_shared_family_check_catches_a_broken_family(monkeypatch: pytest.MonkeyPatch) -> None:
    # moonlit.litepred.testing.check_family, which the SpaceEvo/ElasticViT family tests call, fails on a
    # wrong entry point and on draws that ignore the seed
    from moonlit.litepred import testing

    monkeypatch.setattr(zoo, "_FAMILIES", dict(zoo._FAMILIES))
    draws = iter(range(10**6))

    @zoo.register_family("unseeded-test")
    class Unseeded(zoo.ArchFamily):
        def build(self, description: str, num_classes: int) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, num_classes))

        def sample_one(self, rng: random.Random) -> zoo.ArchSpec:
            return self.make_spec(f"linear{next(draws)}", 4)  # a new architecture every call, whatever the seed

    monkeypatch.setattr(testing, "plugins", lambda: {"unseeded-test": "toy_module"})
    with pytest.raises(AssertionError, match="entry point 'unseeded-test': 'toy_module', expected 'other_module'"):
        testing.check_family("unseeded-test", "other_module")
    with pytest.raises(AssertionError, match="unseeded-test: two draws of seed 4 differ"):
        testing.check_family("unseeded-test", "toy_module", Unseeded)


def test_plugins_load_on_first_lookup_and_a_broken_one_is_one_line(
        tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from importlib.metadata import EntryPoint

    (tmp_path / "toy_litepred_plugin.py").write_text(
        "import torch\nfrom moonlit.litepred.api import ArchFamily, register_family\n\n\n"
        "@register_family('toy-plugin')\nclass Toy(ArchFamily):\n"
        "    def build(self, description, num_classes):\n        return torch.nn.Flatten()\n\n"
        "    def sample_one(self, rng):\n        return self.make_spec('toy', 4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = zoo.PLUGIN_GROUP
    fake = [EntryPoint("toy", "toy_litepred_plugin", group), EntryPoint("gone", "no_such_module_for_litepred", group)]
    monkeypatch.setattr(zoo, "entry_points", lambda group: fake if group == zoo.PLUGIN_GROUP else [])
    monkeypatch.setattr(zoo, "_FAMILIES", dict(zoo._FAMILIES))
    monkeypatch.setattr(zoo, "_PLUGINS", {})
    monkeypatch.setattr(zoo, "_BUILTINS_LOADED", False)
    import sys

    assert "toy_litepred_plugin" not in sys.modules
    with caplog.at_level("WARNING", logger="moonlit.litepred.zoo"):
        assert zoo.get_family("toy-plugin").sample_one(random.Random(0)).description == "toy"
    warnings = [r.getMessage() for r in caplog.records if r.name == "moonlit.litepred.zoo"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "'gone' (no_such_module_for_litepred) failed to import: ModuleNotFoundError" in warnings[0]
    assert zoo.plugins()["toy"] == "toy_litepred_plugin"
    assert zoo.plugins()["gone"].startswith("no_such_module_for_litepred (failed: ModuleNotFoundError")
    with pytest.raises(ValueError, match=r"unknown architecture family 'nope'; registered: \[.*'toy-plugin'.*\]; "
                                         r"plug-ins \(moonlit.litepred.families\): "
                                         r"gone=no_such_module_for_litepred \(failed: "
                                         r"ModuleNotFoundError.*\), toy=toy_litepred_plugin$"):
        zoo.get_family("nope")
    sys.modules.pop("toy_litepred_plugin", None)


def test_the_default_build_families_are_all_registered() -> None:
    from collections import Counter

    from moonlit.common.config import compose_config
    from moonlit.litepred.apps.settings import training_specs

    installed = zoo.plugins()  # the entry points of this distribution resolve
    assert not [value for value in installed.values() if "(failed" in value]
    default = compose_config("litepred", "litepred", ["architectures.train=10", "architectures.calibration=5"])
    families = list(default.architectures.families)
    assert set(families) <= set(zoo.list_families())
    assert set(families) - {"spaceevo-like", "elasticvit-like", "resnet-like"} <= set(installed)
    # code defaults (stand-ins) stay for held-out sets, the config adds the plug-in spaces; equal shares
    assert set(zoo.DEFAULT_FAMILY_WEIGHTS) == set(SAMPLED)
    assert Counter(spec.family for spec in training_specs(default)) == Counter({family: 2 for family in families})


def test_sampling_is_deterministic_and_families_draw_independently() -> None:
    first = zoo.sample_architectures(40, seed=5)
    assert first == zoo.sample_architectures(40, seed=5)
    assert {s.name for s in first} != {s.name for s in zoo.sample_architectures(40, seed=6)}
    # a family's draws depend on (seed, family) only, not on which other families are sampled
    with_resnet = zoo.sample_architectures(12, seed=3, families=["spaceevo-like", "resnet-like"])
    with_vit = zoo.sample_architectures(12, seed=3, families=["spaceevo-like", "elasticvit-like"])
    assert with_resnet[:6] == with_vit[:6] == zoo.sample("spaceevo-like", 6, seed=3)


def test_allocation_follows_weights_and_caps_fixed_families() -> None:
    def counts(specs: list[zoo.ArchSpec]) -> dict[str, int]:
        return {family: sum(s.family == family for s in specs) for family in ("timm-mobile", "resnet-like")}

    families = ["timm-mobile", "resnet-like"]
    assert counts(zoo.sample_architectures(10, 0, families, [0.9, 0.1])) == {"timm-mobile": 9, "resnet-like": 1}
    # 23 timm-mobile specs exist (16 models at 224 + 7 at 160/192): the rest spills over
    n_timm = len(TIMM_MOBILE_MODELS) + 7
    assert counts(zoo.sample_architectures(30, 0, families, {"timm-mobile": 0.9, "resnet-like": 0.1})) == {
        "timm-mobile": n_timm, "resnet-like": 30 - n_timm}
    with pytest.raises(ValueError, match="hold 23 eligible specs, 24 were asked"):
        zoo.sample_architectures(24, 0, ["timm-mobile"])
    with pytest.raises(ValueError, match="2 weights"):
        zoo.sample_architectures(4, 0, SAMPLED, [1.0, 2.0])


def test_heldout_set_composition_and_unique_names() -> None:
    heldout = zoo.heldout_architectures()
    assert len(heldout) == 120
    assert len({s.name for s in heldout}) == 120 and len({_content(s) for s in heldout}) == 120
    timm_224 = {s.description for s in heldout if s.family == "timm-mobile" and s.resolution == 224}
    assert timm_224 == set(TIMM_MOBILE_MODELS)
    assert all(sum(s.family == family for s in heldout) >= 10 for family in SAMPLED)
    assert zoo.heldout_architectures() == heldout


def test_training_and_heldout_never_share_a_spec() -> None:
    heldout = zoo.heldout_architectures(150)
    training = zoo.training_architectures(400)
    same_seed = zoo.training_architectures(150, seed=zoo.HELDOUT_SEED)
    for train in (training, same_seed):
        assert not {s.name for s in heldout} & {s.name for s in train}
        assert not {_content(s) for s in heldout} & {_content(s) for s in train}
    assert all(zoo.is_heldout(s) for s in heldout) and not any(zoo.is_heldout(s) for s in training)
    assert all(s.family != "timm-mobile" for s in training)
    with pytest.raises(ValueError, match="held-out only"):
        zoo.training_architectures(5, families=["timm-mobile"])
    # the partition reserves about a quarter of each sampled space
    pool = zoo.sample_architectures(2000, seed=11)
    assert 0.2 < sum(map(zoo.is_heldout, pool)) / len(pool) < 0.3


def test_spec_dict_and_json_roundtrip(tmp_path) -> None:
    specs = zoo.heldout_architectures(30) + zoo.training_architectures(5)
    for spec in specs:
        assert zoo.ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert zoo.load_specs(zoo.save_specs(specs, tmp_path / "specs.json")) == specs
    with pytest.raises(ValueError, match=r"unknown keys \['color'\]"):
        zoo.ArchSpec.from_dict({**specs[0].to_dict(), "color": "red"})
    with pytest.raises(ValueError, match="input_size"):
        zoo.ArchSpec("a", "resnet-like", "stem8_8x1", (3, 0, 32))


# ------------------------------------------------------------------------------- grammars
@pytest.mark.parametrize("family, arch_cls", [
    ("spaceevo-like", SpaceEvoLikeArch), ("elasticvit-like", ElasticViTLikeArch), ("resnet-like", ResNetLikeArch)])
def test_descriptions_roundtrip_through_the_grammar(family: str, arch_cls: type) -> None:
    for spec in zoo.sample(family, 60, seed=2):
        assert arch_cls.decode(spec.description).encode() == spec.description


@pytest.mark.parametrize("family, description, bad_part", [
    ("spaceevo-like", "stem32_nr6/xx_r2_k3_s2_e6_c24/head1280", "'xx'"),
    ("spaceevo-like", "stem32_nr6/ir_r2_k3_s2_e6_c20/head1280", "c20"),
    ("spaceevo-like", "stem32_nr6/ir_r2_k3_s2_c24/head1280", r"misses options \['e'\]"),
    ("spaceevo-like", "stem32_nr6/cn_r2_k3_s2_c24_se0.25/head1280", r"options \['se'\]"),
    ("spaceevo-like", "stem32_nr6/ir_r2_k3_s2_e6_c24_nxx/head1280", "'nxx'"),
    ("spaceevo-like", "stem32_gelu/ir_r2_k3_s2_e6_c24/head1280", "'stem32_gelu'"),
    ("spaceevo-like", "stem32_nr6/ir_r2_k3_s2_e6_c24", "'ir_r2_k3_s2_e6_c24'"),
    ("elasticvit-like", "stem16_c24d2k3e4_t90d2m3s2", "'t90d2m3s2'"),
    ("elasticvit-like", "stem16_t96d2m3s2_c24d2k3e4", "'c24d2k3e4'"),
    ("elasticvit-like", "stem16_c24d2k3e4", "at least one conv stage and one transformer"),
    ("resnet-like", "stem64_64x2_128y2", "'128y2'"),
    ("resnet-like", "stem0_64x2", "'stem0'"),
    ("timm-mobile", "not_a_timm_model", "'not_a_timm_model'"),
])
def test_bad_descriptions_name_the_bad_part(family: str, description: str, bad_part: str) -> None:
    with pytest.raises(ValueError, match=bad_part):
        zoo.get_family(family).make_spec(description, 224)


def test_spaceevo_like_samples_stay_in_the_mobilew_hyperspace() -> None:
    for spec in zoo.sample("spaceevo-like", 150, seed=4):
        arch = SpaceEvoLikeArch.decode(spec.description)
        assert spec.resolution in (160, 176, 192, 208, 224) and arch.stem_width in (16, 24, 32)
        assert len(arch.stages) == 7
        for blocks, (stride, widths, _, max_depth) in zip(arch.stages[1:], MOBILEW_STAGES):
            options = [dict(re.fullmatch(r"([rsc])(\d+)", o).groups() for o in block.split("_")[1:]
                            if re.fullmatch(r"[rsc]\d+", o)) for block in blocks]
            assert {int(o["c"]) for o in options} <= set(widths) and len({o["c"] for o in options}) == 1
            assert [int(o["s"]) for o in options] == [stride] + [1] * (len(options) - 1)
            layers = sum(int(o["r"]) for o in options)
            pairs = blocks[0].startswith(("cn", "ds"))  # resnet / MobileNetV1 stages come in pairs
            assert 1 <= (layers / 2 if pairs else layers) <= max_depth


def test_elasticvit_like_samples_follow_the_hybrid_space() -> None:
    for spec in zoo.sample("elasticvit-like", 150, seed=4):
        arch = ElasticViTLikeArch.decode(spec.description)
        assert spec.resolution in range(128, 257, 32)
        assert 2 <= len(arch.conv_stages) <= 3 and 2 <= len(arch.transformer_stages) <= 3
        widths = [arch.stem_width] + [s.width for s in (*arch.conv_stages, *arch.transformer_stages)]
        assert widths == sorted(widths)
        for stage in arch.transformer_stages:
            assert 64 <= stage.width <= 320 and stage.width % 16 == 0
            assert 1 <= stage.depth <= 5 and 2 <= stage.mlp_ratio <= 4
        for stage in arch.conv_stages:
            assert stage.kernel in (3, 5) and 1 <= stage.expand <= 6
        downsamples = 1 + len(arch.conv_stages) + sum(s.stride == 2 for s in arch.transformer_stages)
        assert downsamples == 5  # total stride 32


# ---------------------------------------------------------------------------------- builds
@pytest.mark.parametrize("family", ["timm-mobile", *SAMPLED])
def test_family_builds_deterministically_with_classifier_shape(family: str) -> None:
    if family == "timm-mobile":
        specs = [zoo.get_family(family).make_spec(name, 224) for name in ("mobilenetv3_small_100", "levit_128s")]
    else:
        specs = zoo.sample(family, 2, seed=7)
    for spec in specs:
        x = spec.example_input()
        out = _forward(spec.build(), x)
        assert out.shape == (1, 1000) and torch.isfinite(out).all()
        rebuilt = zoo.ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).build()
        assert torch.equal(_forward(rebuilt, x), out)
        small = zoo.ArchSpec(**{**spec.to_dict(), "input_size": spec.input_size, "num_classes": 10})
        assert _forward(small.build(), x).shape == (1, 10)
    # the same architecture under another name (resolution) gets other weights
    other = zoo.get_family(family).make_spec(specs[0].description, specs[0].resolution + 32)
    assert not torch.equal(next(other.build().parameters()), next(specs[0].build().parameters()))


def test_spaceevo_like_rebuilds_timm_models_exactly() -> None:
    x = torch.randn(1, 3, 64, 64)
    for timm_name, description in (("mobilenetv2_100", MOBILENETV2_100), ("efficientnet_b0", EFFICIENTNET_B0)):
        torch.manual_seed(0)
        reference = timm.create_model(timm_name, pretrained=False).eval()
        torch.manual_seed(0)
        ours = SpaceEvoLikeArch.decode(description).build().eval()
        assert [(k, v.shape) for k, v in reference.state_dict().items()] == \
               [(k, v.shape) for k, v in ours.state_dict().items()]
        assert torch.equal(_forward(reference, x), _forward(ours, x))


@pytest.mark.parametrize("tv_name, description", [
    ("resnet18", "stem64_64x2_128x2_256x2_512x2"), ("resnet34", "stem64_64x3_128x4_256x6_512x3")])
def test_resnet_like_matches_torchvision(tv_name: str, description: str) -> None:
    reference = getattr(torchvision.models, tv_name)().eval()
    ours = ResNetLike(ResNetLikeArch.decode(description)).eval()
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert [v.shape for v in ref_state.values()] == [v.shape for v in our_state.values()]
    ours.load_state_dict(dict(zip(our_state, ref_state.values())))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_forward(ours, x), _forward(reference, x), rtol=0, atol=0)


def _hybrid_macs_by_hand(arch: ElasticViTLikeArch, resolution: int, num_classes: int) -> int:
    """Conv: k²·Cin·Cout·H·W/groups; Linear: tokens·in·out; attention: 2·N²·C; SE: 2·C·C/4."""
    h, c = resolution // 2, arch.stem_width
    macs = 9 * 3 * c * h * h + 9 * c * h * h + c * c * h * h  # stem conv, depthwise, pointwise
    for stage in arch.conv_stages:
        for index in range(stage.depth):
            h_out = h // 2 if index == 0 else h
            mid = c * stage.expand
            macs += c * mid * h * h + stage.kernel ** 2 * mid * h_out ** 2 + mid * stage.width * h_out ** 2
            macs += 2 * mid * (mid // 4) if stage.se else 0
            c, h = stage.width, h_out
    for stage in arch.transformer_stages:
        h //= stage.stride
        n, w = h * h, stage.width
        macs += 9 * c * w * n
        macs += stage.depth * (3 * n * w * w + 2 * n * n * w + n * w * w + 2 * n * w * stage.mlp_ratio * w)
        c = w
    return macs + c * num_classes


def test_elasticvit_like_macs_match_hand_formula() -> None:
    for spec in zoo.sample("elasticvit-like", 4, seed=9):
        arch = ElasticViTLikeArch.decode(spec.description)
        model = ElasticViTLike(arch, num_classes=10)
        assert count_macs(model, torch.randn(1, 3, 64, 64)).macs == _hybrid_macs_by_hand(arch, 64, 10)


@pytest.mark.parametrize("name, published_mmacs", [
    ("mobilenetv3_large_100", 217), ("efficientnet_b0", 390), ("mobilenetv2_100", 300), ("mobilenetv3_small_100", 56)])
def test_timm_macs_match_published(name: str, published_mmacs: float) -> None:
    spec = zoo.get_family("timm-mobile").make_spec(name, 224)
    macs = count_macs(spec.build(), spec.example_input()).macs
    assert abs(macs / 1e6 - published_mmacs) <= 0.05 * published_mmacs


def test_resnet_like_resnet18_macs_match_torchvision_docs() -> None:
    spec = zoo.get_family("resnet-like").make_spec("stem64_64x2_128x2_256x2_512x2", 224)
    report = count_macs(spec.build(), spec.example_input())
    assert (report.macs, report.params) == (1_814_073_344, 11_689_512)  # torchvision: 1.81 GFLOPS, 11.7 M


# ---------------------------------------------------------------------------------- ONNX
def _export_and_compare(spec: zoo.ArchSpec, tmp_path, resolution: int) -> None:
    model = spec.build()
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    path = export_onnx(model, x, tmp_path / f"{spec.name.replace('/', '_')}.onnx", opset=17, check=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    want = _forward(model, x).numpy()
    assert got.shape == want.shape == (1, 1000)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 1e-4 * scale, (spec.name, np.abs(got - want).max(), scale)


@pytest.mark.parametrize("family", SAMPLED)
def test_sampled_families_export_to_onnx(family: str, tmp_path) -> None:
    for spec in zoo.sample(family, 3, seed=1):
        _export_and_compare(spec, tmp_path, resolution=64)


@pytest.mark.parametrize("model_name", TIMM_MOBILE_MODELS)
def test_timm_mobile_models_export_to_onnx(model_name: str, tmp_path) -> None:
    _export_and_compare(zoo.get_family("timm-mobile").make_spec(model_name, 224), tmp_path, resolution=224)


def test_heldout_families_select_only_those_families() -> None:
    from moonlit.litepred.zoo import heldout_architectures

    sampled = heldout_architectures(6, families=["spaceevo-like", "elasticvit-like"])
    assert len(sampled) == 6 and {s.family for s in sampled} == {"spaceevo-like", "elasticvit-like"}
    with_timm = heldout_architectures(30, families=["timm-mobile", "resnet-like"])
    assert {s.family for s in with_timm} == {"timm-mobile", "resnet-like"}
    assert sum(s.family == "timm-mobile" for s in with_timm) == 23  # the fixed family comes whole
    everything = heldout_architectures(30)
    assert sum(s.family == "timm-mobile" for s in everything) == 23


def test_calibration_architectures_cover_every_family_round_robin() -> None:
    from collections import Counter

    from moonlit.litepred.zoo import calibration_architectures, training_architectures

    specs = training_architectures(30, seed=1)
    assert len({s.family for s in specs[:10]}) == 1  # the listing is family by family: why round-robin is needed
    chosen = calibration_architectures(specs, 9)
    counts = Counter(s.family for s in chosen)
    assert len(counts) == len({s.family for s in specs}) and max(counts.values()) - min(counts.values()) <= 1
    families = [s.family for s in chosen]
    assert families[: len(counts)] == list(dict.fromkeys(s.family for s in specs))  # one of each family first
    everything = calibration_architectures(specs, 100)
    assert everything == [s for s in chosen] + [s for s in everything[9:]]
    assert sorted(s.name for s in calibration_architectures(specs, 100)) == sorted(s.name for s in specs)
