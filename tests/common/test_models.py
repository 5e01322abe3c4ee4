"""The model registry (moonlit.common.models) on test-local registrations: lookup, timm, weights, errors."""

from __future__ import annotations

import json
import pickle
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import timm
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from moonlit.common import models
from moonlit.common.errors import InputError
from moonlit.common.models import (
    create_model,
    list_families,
    list_models,
    load_weights,
    model_entry,
    register_family,
    register_model,
)
from moonlit.common.train.checkpoint import CheckpointError, save_checkpoint

HIDDEN = 7


class TinyNet(nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Linear(4, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


@register_model("regtest_tinynet", family="regtest", paper="tests", aliases=("TinyNet@test",),
                description="a two-layer MLP of the registry tests")
def _tinynet(num_classes: int = 3) -> TinyNet:
    return TinyNet(HIDDEN, num_classes)


@register_family("regtest", paper="tests", description="'regtest:<width>'")
def _regtest_family(encoding: str, pretrained: bool = False, checkpoint: Path | None = None, *,
                    num_classes: int = 3) -> TinyNet:
    if not (encoding.isascii() and encoding.isdigit()) or not 0 < int(encoding) <= 64:
        raise InputError(f"width {encoding!r:.40} of 'regtest:<width>' should be an integer in 1..64")
    return TinyNet(int(encoding), num_classes)


def _parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)


def test_registered_names_are_listed_and_found_by_alias():
    assert "regtest_tinynet" in list_models()
    assert list_models("regtest_*") == ["regtest_tinynet"]
    assert list_models(paper="tests") == ["regtest_tinynet"]
    assert list_models(family="no-such-family") == []
    assert "regtest" in list_families()
    entry = model_entry("TinyNet@test")
    assert (entry.name, entry.family, entry.paper) == ("regtest_tinynet", "regtest", "tests")
    assert entry.description == "a two-layer MLP of the registry tests"
    # hand count: 4*7 + 7 (body) + 7*5 + 5 (head)
    assert _parameter_count(create_model("TinyNet@test", num_classes=5)) == 4 * 7 + 7 + 7 * 5 + 5


def test_register_model_returns_the_builder_and_refuses_bad_or_taken_names():
    assert _tinynet().head.out_features == 3
    with pytest.raises(ValueError, match="not timm-style"):
        register_model("Bad-Name", family="x", paper="tests")
    with pytest.raises(ValueError, match="registered twice"):
        @register_model("regtest_tinynet", family="x", paper="tests", timm=False)
        def other() -> nn.Module:
            return nn.Identity()
    with pytest.raises(ValueError, match="alias 'TinyNet@test'"):
        @register_model("regtest_alias_clash", family="x", paper="tests", aliases=("TinyNet@test",), timm=False)
        def clash() -> nn.Module:
            return nn.Identity()
    assert "regtest_alias_clash" not in list_models()


def test_timm_builds_the_same_architecture():
    ours = create_model("regtest_tinynet", num_classes=4)
    theirs = timm.create_model("regtest_tinynet", num_classes=4)
    direct = TinyNet(HIDDEN, 4)
    assert isinstance(theirs, TinyNet)
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in direct.state_dict().items()}
    assert _parameter_count(theirs) == _parameter_count(ours) == _parameter_count(direct)
    _randomised(ours, 0)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4)
    torch.testing.assert_close(theirs.eval()(x), ours(x), rtol=0, atol=0)
    # the module holds timm's entry point under the registered name, as timm's own model files do
    assert timm.models.is_model("regtest_tinynet")
    assert isinstance(globals()["regtest_tinynet"](), TinyNet)


def test_family_encodings_and_timm_baselines():
    assert create_model("regtest:12").body.out_features == 12
    with pytest.raises(InputError, match="should be an integer in 1..64"):
        create_model("regtest:0")
    baseline = create_model("resnet18", num_classes=10)
    assert type(baseline).__name__ == "ResNet" and baseline.fc.out_features == 10


def test_unknown_name_is_one_line_with_close_matches():
    with pytest.raises(InputError) as info:
        create_model("regtest_tinynte")
    message = str(info.value)
    assert "\n" not in message and "'regtest_tinynte'" in message and "close matches: regtest_tinynet" in message
    with pytest.raises(InputError, match="'nofamily:1'.*family of"):
        create_model("nofamily:1")
    with pytest.raises(InputError, match="must be a string"):
        create_model(3)  # type: ignore[arg-type]


def test_arguments_the_builder_does_not_take_are_named():
    with pytest.raises(InputError, match=r"model 'regtest_tinynet' takes no argument\(s\) \['width'\]; expected "
                                         r"keyword arguments among \['num_classes'\]"):
        create_model("regtest_tinynet", width=3)
    with pytest.raises(InputError, match=r"model family 'regtest' takes no argument\(s\) \['depth'\]"):
        create_model("regtest:4", depth=2)


def test_a_broken_plugin_is_named_and_the_others_still_load(monkeypatch: pytest.MonkeyPatch):
    point = EntryPoint(name="broken", value="moonlit_no_such_module_for_tests", group=models.ENTRY_POINT_GROUP)
    monkeypatch.setattr(models, "entry_points", lambda group: [point])
    monkeypatch.setattr(models, "_PLUGIN_ERRORS", {})
    monkeypatch.setattr(models, "_PLUGINS_LOADED", set())
    assert "regtest_tinynet" in list_models()
    with pytest.raises(InputError, match="plug-ins that failed to load: moonlit_no_such_module_for_tests"):
        create_model("regtest_nothing")


def test_unknown_names_fuzz(fuzz_settings):
    @fuzz_settings
    @given(st.one_of(st.text(max_size=40), st.text(max_size=20).map(lambda text: "regtest:" + text)))
    def check(name: str) -> None:
        try:
            model = create_model(name)
        except InputError as err:
            assert "\n" not in str(err)
        else:
            assert isinstance(model, nn.Module)

    check()


def _empty_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("MOONLIT_DATA", str(root))
    return root


def test_pretrained_without_local_weights_says_what_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _empty_data_root(tmp_path, monkeypatch)
    for name in ("regtest_tinynet", "resnet18"):
        with pytest.raises(InputError) as info:
            create_model(name, pretrained=True)
        message = str(info.value)
        assert f"no local pretrained weights for '{name}'" in message
        assert "config.json" in message and "model.safetensors" in message and "checkpoint=" in message


def test_pretrained_reads_the_artefact_that_names_the_architecture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = _empty_data_root(tmp_path, monkeypatch)
    source = _randomised(TinyNet(HIDDEN, 3), 1)
    folder = root / "tiny"
    folder.mkdir()
    save_file(source.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "regtest_tinynet"}))
    (root / "MANIFEST.json").write_text(json.dumps({"artefacts": {"tiny": {"folder": "tiny"}}}))
    _same_weights(create_model("regtest_tinynet", pretrained=True), source)
    _same_weights(timm.create_model("regtest_tinynet", pretrained=True), source)


def test_checkpoint_round_trips(tmp_path: Path):
    source = _randomised(create_model("regtest_tinynet"), 2)
    save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "weights.pth")
    save_checkpoint(tmp_path / "run", step=5, model=source)
    for checkpoint in ("weights.safetensors", "weights.pth", "run"):
        _same_weights(create_model("regtest_tinynet", checkpoint=tmp_path / checkpoint), source)
    _same_weights(timm.create_model("regtest_tinynet", checkpoint=tmp_path / "run"), source)


class _Hostile:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_errors_are_input_errors(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        create_model("regtest_tinynet", checkpoint=tmp_path / "missing.pth")
    save_file(TinyNet(HIDDEN + 1, 3).state_dict(), str(tmp_path / "wide.safetensors"))
    with pytest.raises(CheckpointError, match="wide.safetensors does not fit TinyNet") as info:
        create_model("regtest_tinynet", checkpoint=tmp_path / "wide.safetensors")
    assert "\n" not in str(info.value)
    save_checkpoint(tmp_path / "wide_run", step=1, model=TinyNet(HIDDEN + 1, 3))
    with pytest.raises(CheckpointError, match="does not fit the model") as info:
        create_model("regtest_tinynet", checkpoint=tmp_path / "wide_run")
    assert "\n" not in str(info.value)
    (tmp_path / "hostile.pth").write_bytes(pickle.dumps({"weights": _Hostile()}, protocol=2))
    with pytest.raises(CheckpointError, match="restricted unpickler"):
        load_weights(TinyNet(HIDDEN, 3), tmp_path / "hostile.pth")
    torch.save({"note": "no tensors"}, tmp_path / "plain.pth")
    with pytest.raises(InputError, match="holds no state dict"):
        create_model("regtest_tinynet", checkpoint=tmp_path / "plain.pth")


@pytest.mark.real_data
def test_efficientnet_lite0_loads_the_fetched_imagenet_weights(real_artefact):
    folder = real_artefact("efficientnet_lite0")
    expected = load_file(str(folder / "model.safetensors"))
    model = create_model("tf_efficientnet_lite0", pretrained=True)
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=0)
    assert _parameter_count(model) == 4_652_008  # the manifest's summary of the converted file


# --- python -m moonlit.common.models: the listing app (test-local registrations of their own paper) ----------

class TinyConvNet(nn.Module):
    """A 3x3 conv (3 -> 4 channels, no bias) at 8x8 then a 256 -> 2 linear: MACs and parameters by hand."""

    resolution = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.head = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


@register_model("apptest_convnet", family="apptest", paper="apptests", aliases=("ConvNet@app",), timm=False)
def _apptest_convnet() -> TinyConvNet:
    """a conv + linear network of the listing tests"""
    return TinyConvNet()


@register_model("apptest_folder", family="apptest", paper="apptests", loads_weights=True, timm=False)
def _apptest_folder(pretrained: bool = False, checkpoint: Path | None = None) -> TinyConvNet:
    """a model that exists only with weights"""
    if checkpoint is None:
        raise InputError("apptest_folder has no built-in weights: pass checkpoint=<a folder>")
    return TinyConvNet()


def test_models_app_lists_complexity_counted_by_hand(capsys: pytest.CaptureFixture[str]):
    from moonlit.common.config import compose_config

    rows = models.run(compose_config("common", "models", ["paper=apptests"]))
    assert [row["name"] for row in rows] == ["apptest_convnet", "apptest_folder"]
    conv, folder = rows
    assert conv["family"] == "apptest" and conv["aliases"] == ["ConvNet@app"] and conv["resolution"] == 8
    assert conv["mmacs"] == pytest.approx((8 * 8 * 4 * 3 * 3 * 3 + 256 * 2) / 1e6, abs=1e-12)
    assert conv["params_m"] == pytest.approx((4 * 3 * 3 * 3 + 256 * 2 + 2) / 1e6, abs=1e-12)
    assert folder["mmacs"] is None and folder["params_m"] is None and "checkpoint=" in folder["note"]
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 4
    assert table[2] == "| apptest_convnet | apptest | apptests | ConvNet@app | 8 | 0.0 | 0.00 |  |"


def test_models_app_names_only_and_filter_errors(capsys: pytest.CaptureFixture[str]):
    from moonlit.common.config import compose_config

    rows = models.run(compose_config("common", "models", ["pattern=apptest_c*", "complexity=false"]))
    assert [(row["name"], row["mmacs"], row["params_m"]) for row in rows] == [("apptest_convnet", None, None)]
    with pytest.raises(InputError, match=r"paper='nope' has no registered models; expected one of \[.*'apptests'"):
        models.run(compose_config("common", "models", ["paper=nope"]))
    with pytest.raises(InputError, match=r"pattern='zz\*' \(paper=None\) matches no registered model"):
        models.run(compose_config("common", "models", ["pattern=zz*"]))
