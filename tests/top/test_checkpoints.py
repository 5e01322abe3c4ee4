"""moonlit.top.checkpoints: released ToP folders round-trip, masks follow the reference, hostile pickles fail."""

from __future__ import annotations

import math
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from moonlit.common.train.checkpoint import CheckpointError
from moonlit.top.checkpoints import (
    L0_MODULE_FILE,
    load_released_checkpoint,
    load_released_gates,
    released_keep_schedule,
    released_masks,
)
from moonlit.top.reference_writer import write_reference_style_checkpoint

# Clear +10 / -10 patterns: P(z > 0) is ~1 for +10 and ~2e-4 for -10, so round(B - sum P) zeros are
# exactly the -10 entries. Bin 0 holds the best-ranked tokens. Non-integer offsets check exact storage.
TOKEN_LOGA = torch.tensor([
    [10.0, 9.75, -10.0, 10.5, -9.5],
    [10.0, 10.0, 10.0, 10.0, 10.25],
    [-10.0, -10.0, -10.0, -10.0, 10.0],
])
# Location gates are judged one by one (P(z > 0) >= 0.5 prunes): -1 prunes, as
# P = sigmoid(-1 + (2/3) ln 11) = 0.645; -10 keeps everything. Judged as one row, round(3 - 1.29) = 2
# gates would be zeroed instead of 1.
LAYER_LOGA = torch.tensor([-1.0, -10.0, -1.0])
PRUNE_LAYERS = [1, 2, 3]
EXPECTED_BINS = [[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]
EXPECTED_PRUNES = [True, False, True]
EXPECTED_KEEP = [3 / 5, 1.0, 1 / 5]
EXPECTED_REMAINING = [1.0, 3 / 5, 3 / 5, 3 / 5 * 1 / 5]  # layers 0..3, cumulative


@pytest.fixture(scope="module")
def bert4(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer_dir: Path):
    """A random 4-layer BertForSequenceClassification (hidden 32)."""
    from moonlit.common.data.synthetic import write_tiny_bert

    folder = write_tiny_bert(tmp_path_factory.mktemp("bert4"), hidden_size=32, num_layers=4, num_heads=2,
                             intermediate_size=64, tokenizer_dir=wordpiece_tokenizer_dir, seed=1)
    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def _released(folder: Path, model, **kwargs) -> Path:
    args = {"token_log_alpha": TOKEN_LOGA, "layer_log_alpha": LAYER_LOGA, "prune_layers": PRUNE_LAYERS, "bin_num": 5}
    args.update(kwargs)
    return write_reference_style_checkpoint(folder, model, **args)


def test_released_folder_round_trips(tmp_path: Path, bert4) -> None:
    folder = _released(tmp_path / "released", bert4, lambda_1=0.25, lambda_2=-1.5, target_sparsity=0.43)
    assert "models.l0_module" not in sys.modules and "models" not in sys.modules
    model, gates = load_released_checkpoint(folder)
    # Nothing foreign was imported while loading.
    assert "models.l0_module" not in sys.modules and "models" not in sys.modules

    assert torch.equal(gates.token_log_alpha, TOKEN_LOGA) and torch.equal(gates.layer_log_alpha, LAYER_LOGA)
    assert gates.prune_layers == PRUNE_LAYERS and gates.bin_num == 5 and gates.num_hidden_layers == 4
    assert gates.has_layer_gate and gates.source_class == "models.l0_module.L0ModuleForMAC"
    assert gates.temperature == pytest.approx(2 / 3) and gates.magical_number == pytest.approx(0.8)
    assert gates.lambda_1 == pytest.approx(0.25) and gates.lambda_2 == pytest.approx(-1.5)
    assert gates.target_sparsity == pytest.approx(0.43)
    assert gates.raw_attributes["pruning_type"] == "token+pruner"
    assert gates.config_attributes["num_hidden_layers"] == 4 and gates.config_attributes["hidden_size"] == 32

    # The weights are the ones written (the reference's extra keys are ignored).
    original = bert4.state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], v) for k, v in original.items())
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, bert4(input_ids=ids).logits)


def test_keep_schedule_matches_hand_derived_masks(tmp_path: Path, bert4) -> None:
    gates = load_released_gates(_released(tmp_path, bert4) / L0_MODULE_FILE)
    masks = released_masks(gates)
    assert masks.bins.tolist() == EXPECTED_BINS and masks.layers.tolist() == [1.0, 0.0, 1.0]
    schedule = released_keep_schedule(gates)
    assert schedule["bin_keep"] == EXPECTED_BINS and schedule["kept_bins"] == [3, 5, 1]
    assert schedule["location_prunes"] == EXPECTED_PRUNES and schedule["prune_layers"] == PRUNE_LAYERS
    assert schedule["keep_ratio"] == pytest.approx(EXPECTED_KEEP, abs=1e-12)
    assert schedule["remaining_token_ratio"] == pytest.approx(EXPECTED_REMAINING, abs=1e-12)


def _reference_deterministic_z(loga: list[float], temperature: float, magical_number: float) -> list[int]:
    """L0Module._deterministic_z of the reference, transcribed with floats and a sort."""
    limit_a, limit_b, eps = -0.1, 1.1, 1e-6
    xn = (0 - limit_a) / (limit_b - limit_a)
    logits = math.log(xn) - math.log(1 - xn)
    cdf = [min(max(1 / (1 + math.exp(-(logits * temperature - a))), eps), 1 - eps) for a in loga]
    num_zeros = round(len(loga) - sum(1 - c for c in cdf))
    score = [1 / (1 + math.exp(-(a / temperature * magical_number))) for a in loga]
    zeroed = set(sorted(range(len(loga)), key=lambda i: score[i])[:num_zeros])
    return [0 if i in zeroed else 1 for i in range(len(loga))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_follow_the_reference_rule_on_random_gates(tmp_path: Path, bert4, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    ln100 = math.log(100.0)  # the reference clamps log-alphas to [-ln 100, ln 100]
    token = (torch.rand(3, 12, generator=generator) * 2 - 1) * ln100
    layer = (torch.rand(3, generator=generator) * 2 - 1) * ln100
    folder = _released(tmp_path, bert4, token_log_alpha=token, layer_log_alpha=layer, bin_num=12)
    gates = load_released_gates(folder / L0_MODULE_FILE)
    masks = released_masks(gates)
    beta, magic = 2 / 3, 0.8
    expected_bins = [_reference_deterministic_z(row, beta, magic) for row in token.tolist()]
    expected_layers = [_reference_deterministic_z([a], beta, magic)[0] for a in layer.tolist()]
    assert masks.bins.to(torch.int64).tolist() == expected_bins
    assert masks.layers.to(torch.int64).tolist() == expected_layers


def test_without_pruner_loga_every_location_prunes(tmp_path: Path, bert4) -> None:
    gates = load_released_gates(_released(tmp_path, bert4, layer_log_alpha=None) / L0_MODULE_FILE)
    assert not gates.has_layer_gate and gates.raw_attributes["pruning_type"] == "token"
    assert torch.equal(gates.token_log_alpha, TOKEN_LOGA)
    schedule = released_keep_schedule(gates)
    assert schedule["location_prunes"] == [True, True, True]
    assert schedule["keep_ratio"] == pytest.approx([3 / 5, 1.0, 1 / 5], abs=1e-12)
    assert schedule["remaining_token_ratio"] == pytest.approx([1.0, 3 / 5, 3 / 5, 3 / 25], abs=1e-12)


def test_base_class_and_roberta_config(tmp_path: Path, tiny_roberta_dir: Path) -> None:
    roberta = AutoModelForSequenceClassification.from_pretrained(tiny_roberta_dir).eval()
    layers = roberta.config.num_hidden_layers
    folder = write_reference_style_checkpoint(
        tmp_path, roberta, TOKEN_LOGA[:1], LAYER_LOGA[:1], [layers - 1], 5, class_name="L0Module"
    )
    model, gates = load_released_checkpoint(folder)
    assert type(model).__name__ == "RobertaForSequenceClassification"
    assert gates.source_class == "models.l0_module.L0Module" and gates.config_attributes["model_type"] == "roberta"
    assert gates.prune_layers == [layers - 1] and released_keep_schedule(gates)["bin_keep"] == EXPECTED_BINS[:1]


# ---- refusals --------------------------------------------------------------------------------------


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def _touch_code(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def _assert_refused(file: Path, offending: str) -> None:
    with pytest.raises(CheckpointError) as info:
        load_released_gates(file)
    message = str(info.value)
    assert str(file) in message and f"it needs {offending}." in message, message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_pickles_are_refused_without_running(tmp_path: Path, bert4) -> None:
    marker = tmp_path / "executed"
    shell = f"{os.system.__module__}.system"  # posix.system on Linux
    torch.save({"token_loga": TOKEN_LOGA, "hook": _RunsShell(f"touch {marker}")}, tmp_path / "system.pt")
    _assert_refused(tmp_path / "system.pt", shell)
    with open(tmp_path / "eval.pt", "wb") as f:
        pickle.dump(_Evals(_touch_code(marker)), f, protocol=2)
    _assert_refused(tmp_path / "eval.pt", "builtins.eval")
    # A payload hidden in an otherwise well-formed L0 module: only the payload is named.
    nested = _released(tmp_path / "nested", bert4, extra_attributes={"hook": _RunsShell(f"touch {marker}")})
    _assert_refused(nested / L0_MODULE_FILE, shell)
    assert not marker.exists()


def test_unknown_class_is_refused_even_when_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "executed"
    evil = types.ModuleType("evil")

    class Payload:
        def __setstate__(self, state: dict) -> None:
            Path(state["marker"]).touch()

    Payload.__module__, Payload.__qualname__ = "evil", "Payload"
    evil.Payload = Payload
    monkeypatch.setitem(sys.modules, "evil", evil)
    payload = Payload.__new__(Payload)
    payload.__dict__["marker"] = str(marker)
    torch.save(payload, tmp_path / "evil.pt")
    # An unrestricted load would run it (so the marker can tell) ...
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    # ... ours refuses it, with the class still importable.
    _assert_refused(tmp_path / "evil.pt", "evil.Payload")
    assert not marker.exists()


def test_missing_l0_module_is_named(tmp_path: Path, bert4) -> None:
    folder = _released(tmp_path / "released", bert4)
    (folder / L0_MODULE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=L0_MODULE_FILE):
        load_released_checkpoint(folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_released_checkpoint(tmp_path / "nowhere")


def test_malformed_modules_are_explained(tmp_path: Path, bert4) -> None:
    no_token = _released(tmp_path / "no_token", bert4, token_log_alpha=None)
    with pytest.raises(CheckpointError, match="holds no token_loga"):
        load_released_gates(no_token / L0_MODULE_FILE)
    wrong_bins = _released(tmp_path / "wrong_bins", bert4, extra_attributes={"bin_num": 7})
    with pytest.raises(CheckpointError, match=r"bin_num=7 disagrees with token_loga's shape \(3, 5\)"):
        load_released_gates(wrong_bins / L0_MODULE_FILE)
    wrong_layers = _released(tmp_path / "wrong_layers", bert4, prune_layers=[0, 1, 2])
    with pytest.raises(CheckpointError, match=r"prune_layers \[0, 1, 2\]"):
        load_released_gates(wrong_layers / L0_MODULE_FILE)
    torch.save({"token_loga": TOKEN_LOGA}, tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match="holds a dict; expected a pickled models.l0_module.L0ModuleForMAC"):
        load_released_gates(tmp_path / "state_dict.pt")


def test_released_checkpoint_as_top_model(tmp_path: Path, bert4) -> None:
    """The released folder becomes a ToPModel whose eval gates are the reference's masks and that prunes accordingly."""
    from moonlit.top.checkpoints import released_top_model

    top = released_top_model(_released(tmp_path / "released", bert4))
    values = top.gates()  # eval mode: the deterministic gates
    assert values.bins.tolist() == EXPECTED_BINS and values.layers.tolist() == [1.0, 0.0, 1.0]
    ids = torch.randint(5, 100, (1, 21), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = top(input_ids=ids)
    # By hand: 20 prunable tokens after CLS. Layer 1 keeps bins {0, 1, 3}: bin = floor(r * 5 / 20), so ranks
    # 0-7 and 12-15, 12 tokens. Layer 2 does not prune. Layer 3 keeps bin 4 of its 12 candidates:
    # floor(r * 5 / 12) == 4 <=> r >= 9.6, ranks 10 and 11, 2 tokens. CLS is always kept.
    assert out.kept_counts[0].tolist() == [21, 1 + 12, 1 + 12, 1 + 2]
