"""The named ElasticViT models in the model registry and in timm (moonlit.elasticvit.models + moonlit.common.models)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from hypothesis import given
from hypothesis import strategies as st

from moonlit.common.errors import InputError
from moonlit.common.models import create_model, list_models, model_entry
from moonlit.common.train.checkpoint import save_checkpoint
from moonlit.elasticvit.flops import subnet_complexity
from moonlit.elasticvit.models import NAMED_SUBNETS, build_model, named_subnet
from moonlit.elasticvit.space import decode
from moonlit.elasticvit.supernet import ElasticViTSupernet

EXPECTED_NAMES = ["elasticvit_l1", "elasticvit_l1_5", "elasticvit_l2", "elasticvit_l3", "elasticvit_m",
                  "elasticvit_s1", "elasticvit_s2", "elasticvit_t1", "elasticvit_t2"]
T1 = "r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2"


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_named_models_are_registered_with_their_paper_and_reference_names():
    assert list_models(paper="elasticvit") == EXPECTED_NAMES
    assert all(timm.models.is_model(name) for name in EXPECTED_NAMES)
    for alias, name in (("T1", "elasticvit_t1"), ("L1.5", "elasticvit_l1_5"), ("elastic_L1.5", "elasticvit_l1_5"),
                        ("M", "elasticvit_m"), ("elastic_S2", "elasticvit_s2")):
        assert model_entry(alias).name == name


def test_timm_builds_the_papers_architecture():
    reference = build_model(decode(T1), num_classes=10).eval()
    from_timm = timm.create_model("elasticvit_t1", num_classes=10).eval()
    ours = create_model("T1", num_classes=10)
    assert _shapes(from_timm) == _shapes(ours) == _shapes(reference)
    assert from_timm.subnet == reference.subnet
    from_timm.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(from_timm(x), reference(x), rtol=0, atol=0)


def test_encodings_and_unknown_names():
    assert _shapes(create_model(f"elasticvit:{T1}")) == _shapes(build_model(decode(T1)))
    assert create_model("elastic_T1").subnet == decode(NAMED_SUBNETS["elasticvit_t1"])
    with pytest.raises(InputError, match="close matches: elasticvit_l3"):
        create_model("elasticvit_l4")


@pytest.mark.parametrize("name", ["T2", "elasticvit:" + T1])
def test_create_model_has_the_seeded_weights_of_build_model(name: str):
    """The registry builds what the constructor builds, weight for weight under one seed."""
    torch.manual_seed(2)
    ours = create_model(name, num_classes=6).state_dict()
    torch.manual_seed(2)
    subnet = decode(name.removeprefix("elasticvit:")) if ":" in name else named_subnet(name)
    theirs = build_model(subnet, num_classes=6).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_elasticvit_family_fuzz(fuzz_settings):
    @fuzz_settings
    @given(st.text(max_size=60))
    def check(text: str) -> None:
        try:
            create_model("elasticvit:" + text)
        except InputError as err:
            assert "\n" not in str(err)

    check()


def test_pretrained_without_checkpoint_says_which_file():
    with pytest.raises(InputError, match=r"pretrained=True needs checkpoint=<the reference's released supernet"):
        timm.create_model("elasticvit_s1", pretrained=True)


def test_missing_checkpoint_is_an_input_error_naming_it(tmp_path: Path):
    with pytest.raises(InputError, match=r"checkpoint .*ckpt.pth.tar does not exist"):
        create_model("S1", checkpoint=tmp_path / "ckpt.pth.tar")


@torch.no_grad()
def test_checkpoint_round_trip_from_our_supernet_directory(tmp_path: Path):
    torch.manual_seed(0)
    supernet = ElasticViTSupernet(num_classes=4)
    for parameter in supernet.parameters():
        parameter.add_(0.01 * torch.randn_like(parameter))
    save_checkpoint(tmp_path / "run", step=2, model=supernet)
    supernet.set_active(decode(T1))
    expected_model = supernet.get_active_subnet().eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    for model in (create_model("T1", checkpoint=tmp_path / "run", num_classes=4),
                  timm.create_model("elasticvit_t1", checkpoint=tmp_path / "run", num_classes=4),
                  create_model(f"elasticvit:{T1}", checkpoint=tmp_path / "run", num_classes=4)):
        torch.testing.assert_close(model(x), expected_model(x), rtol=0, atol=0)


def test_models_app_lists_the_nine_models_with_their_complexity():
    """``python -m moonlit.common.models paper=elasticvit``: the registry runs as a script (a second copy of the
    module) while the plug-ins register with the imported one; nine rows, MMACs and parameters of the analytic
    counter (moonlit.elasticvit.flops), no clash, no warning."""
    result = subprocess.run([sys.executable, "-m", "moonlit.common.models", "paper=elasticvit"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Overwriting" not in result.stderr
    rows = result.stdout.splitlines()[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == EXPECTED_NAMES
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        complexity = subnet_complexity(named_subnet(cells[0]))
        assert cells[1:3] == ["elasticvit", "elasticvit"]
        assert cells[4] == str(named_subnet(cells[0]).resolution)
        assert cells[5] == f"{complexity.macs / 1e6:.1f}" and cells[6] == f"{complexity.params / 1e6:.2f}"
