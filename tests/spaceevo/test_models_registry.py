"""The SEQnets in the model registry and in timm (moonlit.spaceevo.models + moonlit.common.models)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.common.models import create_model, list_models, model_entry, run
from moonlit.common.train.checkpoint import save_checkpoint
from moonlit.spaceevo.models import PUBLISHED_SEQNETS, PUBLISHED_SUPERNETS, resolve_model
from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding, min_subnet
from moonlit.spaceevo.supernet import Supernet

SEARCH_RESULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "spaceevo" / "search_result.yaml"
EXPECTED_NAMES = [f"seqnet_{device}_a{i}" for device in ("pixel4", "vnni") for i in range(5)]


def _paper_subnet(space: str, subnet: str, num_classes: int | None = None) -> torch.nn.Module:
    """The paper's own construction: the supernet of ``space`` cut to ``subnet``."""
    encoding = SubnetEncoding.decode(subnet)
    supernet = Supernet(SpaceEncoding.decode(space), num_classes=num_classes, resolutions=[encoding.resolution])
    supernet.set_active(encoding)
    return supernet.get_active_subnet().eval()


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.skipif(not SEARCH_RESULT.is_file(), reason="shared data folder not beside the clone")
def test_embedded_list_equals_the_reference_search_result():
    data = yaml.safe_load(SEARCH_RESULT.read_text())
    assert PUBLISHED_SUPERNETS == data["specific_supernet_encoding_dict"]
    assert {name: list(entry) for name, entry in PUBLISHED_SEQNETS.items()} == data["specific_subnet_encoding_dict"]


def test_seqnets_are_registered_under_timm_style_names_and_display_aliases():
    assert list_models(paper="spaceevo") == sorted(EXPECTED_NAMES)
    assert list_models("seqnet_vnni_*") == [f"seqnet_vnni_a{i}" for i in range(5)]
    assert model_entry("SEQnet@pixel4-A3").name == "seqnet_pixel4_a3"
    assert all(timm.models.is_model(name) for name in EXPECTED_NAMES)


@pytest.mark.parametrize("name, display", [
    ("seqnet_vnni_a0", "SEQnet@vnni-A0"),
    pytest.param("seqnet_pixel4_a1", "SEQnet@pixel4-A1", marks=pytest.mark.slow),
])
def test_timm_builds_the_papers_architecture(name: str, display: str):
    supernet, subnet = PUBLISHED_SEQNETS[display]
    reference = _paper_subnet(PUBLISHED_SUPERNETS[supernet], subnet)
    from_timm = timm.create_model(name).eval()
    ours = create_model(display).eval()
    assert type(from_timm) is type(reference)
    assert _shapes(from_timm) == _shapes(ours) == _shapes(reference)
    from_timm.load_state_dict(reference.state_dict())
    resolution = SubnetEncoding.decode(subnet).resolution
    x = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(from_timm(x), reference(x), rtol=0, atol=0)


def test_encodings_build_through_the_seqnet_family():
    space = SpaceEncoding.decode(PUBLISHED_SUPERNETS["spaceevo@vnni"])
    subnet = min_subnet(space, resolution=160)  # the notes: A0 is its supernet's minimum at 160 px
    model = create_model(f"seqnet:{space}:{subnet.encode()}", num_classes=7)
    named = create_model("seqnet_vnni_a0", num_classes=7)
    assert _shapes(model) == _shapes(named)
    assert _shapes(create_model(resolve_model(f"{space}:{subnet.encode()}").model_name, num_classes=7)) == \
        _shapes(named)


def test_spec_model_name_is_the_registered_name_or_the_encoding(tmp_path: Path):
    assert resolve_model("SEQnet@pixel4-A2").model_name == "seqnet_pixel4_a2"
    supernet, subnet = PUBLISHED_SEQNETS["SEQnet@vnni-A1"]
    space = PUBLISHED_SUPERNETS[supernet]
    assert resolve_model(f"seqnet:{space}:{subnet}").model_name == f"seqnet:{space}:{subnet}"
    # a search-result file: its own names are not registered, so they build by encoding
    renamed = tmp_path / "search_result.yaml"
    renamed.write_text(yaml.safe_dump({"specific_supernet_encoding_dict": {"mine": space},
                                       "specific_subnet_encoding_dict": {"Mine-A1": ["mine", subnet]}}))
    assert resolve_model("Mine-A1", renamed).model_name == f"seqnet:{space}:{subnet}"


def test_callers_path_builds_the_seeded_weights_of_the_papers_construction(tmp_path: Path):
    """evaluate/downstream_cls/benchmark build ``create_model(resolve_model(name, search_result).model_name)``:
    for a published name and for a file's entry, the same weights as the supernet cut under the same seed."""
    supernet, subnet = PUBLISHED_SEQNETS["SEQnet@vnni-A0"]
    space = PUBLISHED_SUPERNETS[supernet]
    renamed = tmp_path / "search_result.yaml"
    renamed.write_text(yaml.safe_dump({"specific_supernet_encoding_dict": {"mine": space},
                                       "specific_subnet_encoding_dict": {"Mine-A0": ["mine", subnet]}}))
    torch.manual_seed(3)
    expected = _paper_subnet(space, subnet, num_classes=5).state_dict()
    for name, search_result in (("SEQnet@vnni-A0", None), ("Mine-A0", renamed)):
        torch.manual_seed(3)
        built = create_model(resolve_model(name, search_result).model_name, num_classes=5).state_dict()
        assert list(built) == list(expected)
        assert all(torch.equal(built[key], expected[key]) for key in expected), name


def test_models_app_lists_the_ten_seqnets(capsys: pytest.CaptureFixture[str]):
    cfg = compose_config("common", "models", ["paper=spaceevo", "complexity=false"])
    rows = run(cfg)
    assert [row["name"] for row in rows] == sorted(EXPECTED_NAMES)
    assert {row["family"] for row in rows} == {"seqnet"} and rows[0]["aliases"] == ["SEQnet@pixel4-A0"]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 + 10 and printed[2].startswith("| seqnet_pixel4_a0 | seqnet | spaceevo |")


def test_models_app_counts_a0s_macs_and_parameters():
    """MMACs and parameters of the app against a hand count over the built network's layers."""
    row = run(compose_config("common", "models", ["pattern=seqnet_vnni_a0"]))[0]
    model = create_model("seqnet_vnni_a0")
    assert row["resolution"] == 160
    assert row["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0)
    macs = [0]
    hooks = [module.register_forward_hook(lambda m, i, out: macs.append(_layer_macs(m, out)))
             for module in model.modules() if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 160, 160))
    for hook in hooks:
        hook.remove()
    # the hand count has convs and the classifier only; the rest (SE scaling, pooling) is under 1%
    assert len(macs) > 50 and 0.99 * row["mmacs"] <= sum(macs) / 1e6 <= row["mmacs"]


def _layer_macs(module: torch.nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of one conv or linear layer: outputs x inputs feeding each output."""
    if isinstance(module, torch.nn.Conv2d):
        return out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    return out.numel() * module.in_features


def test_seqnet_family_fuzz(fuzz_settings):
    @fuzz_settings
    @given(st.text(max_size=60))
    def check(text: str) -> None:
        try:
            create_model("seqnet:" + text)
        except InputError as err:
            assert "\n" not in str(err)

    check()


def test_pretrained_without_checkpoint_names_the_supernet_file():
    with pytest.raises(InputError, match=r"pretrained=True needs checkpoint=<supernet spaceevo@vnni "
                                         r"\(onnxw-151122-023231\) checkpoint.*checkpoint.pth.*lsq.pth"):
        timm.create_model("seqnet_vnni_a0", pretrained=True)


def test_missing_checkpoint_is_an_input_error_naming_it(tmp_path: Path):
    with pytest.raises(InputError, match=r"checkpoint .*lsq.pth of SEQnet 'SEQnet@vnni-A0' does not exist"):
        create_model("seqnet_vnni_a0", checkpoint=tmp_path / "lsq.pth")


def test_checkpoint_round_trip_through_create_model_and_timm(tmp_path: Path):
    torch.manual_seed(0)
    supernet_name, subnet = PUBLISHED_SEQNETS["SEQnet@vnni-A0"]
    supernet = Supernet(SpaceEncoding.decode(PUBLISHED_SUPERNETS[supernet_name]), num_classes=5, resolutions=[160])
    with torch.no_grad():
        for parameter in supernet.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    save_checkpoint(tmp_path / "ckpt", step=1, model=supernet, extra={"phase": "fp32"})
    supernet.set_active(SubnetEncoding.decode(subnet))
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = supernet.eval()(x)
        for model in (create_model("SEQnet@vnni-A0", checkpoint=tmp_path / "ckpt", num_classes=5),
                      timm.create_model("seqnet_vnni_a0", checkpoint=tmp_path / "ckpt", num_classes=5)):
            torch.testing.assert_close(model(x), expected)


def test_importing_the_registry_alone_tells_timm_the_names():
    """timm has no plug-in discovery: ``import moonlit.common.models`` loads the plug-ins (a fresh interpreter)."""
    code = ("import timm, moonlit.common.models; "
            "print(type(timm.create_model('seqnet_vnni_a0')).__name__, timm.list_models('seqnet_vnni_*'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(maxsplit=1) == [
        "StaticSubnet", str([f"seqnet_vnni_a{i}" for i in range(5)]) + "\n"]
