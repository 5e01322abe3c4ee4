"""A model folder named in a ToP config is checked before ``from_pretrained``: a missing folder or one
without ``config.json`` is an InputError naming the path, not transformers' "Repo id must be in the form"."""

from __future__ import annotations

from pathlib import Path

import pytest

from moonlit.common.errors import InputError
from moonlit.top.artifacts import load_pruned, model_source
from moonlit.top.finetune import load_classifier


def test_missing_and_incomplete_folders_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "finetune" / "model"
    for call in (lambda: model_source(missing), lambda: load_classifier(str(missing), 2)):
        with pytest.raises(InputError, match=rf"model folder {missing} does not exist; expected a Hugging Face "
                                             r"model folder \(config.json"):
            call()
    with pytest.raises(InputError, match=r"model folder \./relative/teacher does not exist"):
        model_source("./relative/teacher")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=rf"model folder {empty} has no config.json"):
        load_classifier(str(empty), 2)
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"")
    with pytest.raises(InputError, match=rf"model {weights} is a file"):
        model_source(weights)
    with pytest.raises(InputError, match=rf"model folder {missing} does not exist; expected a moonlit ToP model"):
        load_pruned(missing)


def test_folders_and_hub_names_pass(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert model_source(tmp_path) == str(tmp_path)
    for hub_name in ("bert-base-uncased", "senfu/bert-base-uncased-top-pruned-sst2"):
        assert model_source(hub_name) == hub_name  # from_pretrained reads it from the local HF cache, if there
