"""Session-scoped fixtures shared by every test package.

Data fixtures: small on-disk stand-ins written by ``moonlit.common.data.synthetic`` (an image
folder, GLUE TSVs, a WordPiece tokenizer, tiny BERT / RoBERTa dirs). Imports happen inside the
fixtures so that tests which do not use them do not pay for torch/transformers imports.
"""

from __future__ import annotations

from pathlib import Path

import pytest


# --- property tests (hypothesis) -----------------------------------------------------------------

@pytest.fixture(params=[pytest.param(100, id="fuzz100"), pytest.param(1000, id="fuzz1000", marks=pytest.mark.slow)])
def fuzz_settings(request: pytest.FixtureRequest):
    """Hypothesis settings for a property test: 100 examples in the default tier (same examples every
    run), 1,000 fresh ones in the ``slow`` tier. Use as a decorator on an inner ``@given`` function::

        def test_roundtrip(fuzz_settings):
            @fuzz_settings
            @given(st.text())
            def check(text): ...
            check()
    """
    from hypothesis import HealthCheck, settings

    return settings(max_examples=request.param, deadline=None, derandomize=request.param <= 100, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# --- data fixtures (moonlit.common.data) -------------------------------------------------------

@pytest.fixture(scope="session")
def synthetic_image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/{train,val}/<class>/*.jpg``: 4 classes, 8 train and 3 val images each, 32x32."""
    from moonlit.common.data.synthetic import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("images"), num_classes=4,
                              images_per_class={"train": 8, "val": 3}, image_size=32, seed=0)


@pytest.fixture(scope="session")
def synthetic_glue_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 8 GLUE tasks in the classic layout: 200 train, 40 dev and 10 test rows per file."""
    from moonlit.common.data.synthetic import write_glue_tsvs

    return write_glue_tsvs(tmp_path_factory.mktemp("glue"), rows_per_split={"train": 200, "dev": 40, "test": 10},
                           seed=0)


@pytest.fixture(scope="session")
def wordpiece_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT WordPiece tokenizer trained on the synthetic GLUE text."""
    from moonlit.common.data.synthetic import train_wordpiece_tokenizer

    return train_wordpiece_tokenizer(tmp_path_factory.mktemp("wordpiece"), seed=0)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer_dir: Path) -> Path:
    """A random 2-layer BertForSequenceClassification (hidden 64, 2 labels) with its tokenizer."""
    from moonlit.common.data.synthetic import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("bert-tiny"), tokenizer_dir=wordpiece_tokenizer_dir, seed=0)


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer RobertaForSequenceClassification (hidden 64, 2 labels) with its BPE tokenizer."""
    from moonlit.common.data.synthetic import write_tiny_roberta

    return write_tiny_roberta(tmp_path_factory.mktemp("roberta-tiny"), seed=0)


@pytest.fixture(scope="session")
def text_mutations():
    """``text_mutations(valid, nasty)``: a strategy of ``valid`` with 1-3 edits (insert / delete / replace a
    character, a Unicode digit for an ASCII one, a trailing newline, surrounding space, a leading zero, a
    5,000-digit number); ``nasty`` lists the characters that break a grammar's naive parsers."""
    from hypothesis import strategies as st

    @st.composite
    def mutated(draw, valid: str, nasty: list[str]) -> str:
        text = valid
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(["insert", "delete", "replace", "unicode_digit", "newline", "space",
                                       "leading_zero", "huge"]))
            i = draw(st.integers(0, len(text)))
            digits = [j for j, c in enumerate(text) if c in "0123456789"]
            if op == "insert":
                text = text[:i] + draw(st.sampled_from(nasty) | st.characters()) + text[i:]
            elif op == "delete" and text:
                text = text[:i] + text[i + 1:]
            elif op == "replace" and text:
                text = text[:i] + draw(st.sampled_from([*nasty, *"0123456789"])) + text[i + 1:]
            elif op == "unicode_digit" and digits:
                j = draw(st.sampled_from(digits))  # Arabic-Indic, fullwidth, Devanagari forms of the digit
                text = text[:j] + chr(draw(st.sampled_from([0x0660, 0xFF10, 0x0966])) + int(text[j])) + text[j + 1:]
            elif op == "newline":
                text += "\n"
            elif op == "space":
                text = draw(st.sampled_from([" " + text, text + " "]))
            elif op == "leading_zero" and digits:
                j = draw(st.sampled_from(digits))
                text = text[:j] + "0" + text[j:]
            elif op == "huge" and digits:
                j = draw(st.sampled_from(digits))
                text = text[:j] + "9" * 5000 + text[j:]
        return text

    return mutated


@pytest.fixture(scope="session")
def mapping_mutations():
    """``mapping_mutations(base, replacements)``: a strategy of a deep copy of the config mapping ``base``
    with 1-2 edits (delete a key, replace any nested value by one of ``replacements``, add an unknown key)."""
    import copy

    from hypothesis import strategies as st

    def paths_of(node: object, prefix: tuple = ()) -> list[tuple]:
        found = []
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, value in items:
            found.append(prefix + (key,))
            found += paths_of(value, prefix + (key,))
        return found

    @st.composite
    def mutated(draw, base: dict, replacements: list) -> dict:
        data = copy.deepcopy(base)
        for _ in range(draw(st.integers(1, 2))):
            path = draw(st.sampled_from(paths_of(data)))
            parent = data
            for key in path[:-1]:
                parent = parent[key]
            op = draw(st.sampled_from(["delete", "replace", "unknown"]))
            if op == "delete" and isinstance(parent, dict):
                del parent[path[-1]]
            elif op == "replace":
                parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(replacements)))
            elif op == "unknown" and isinstance(parent, dict):
                parent["unknown_key"] = 1
        return data

    return mutated


# --- real data (scripts/get_data.sh) ------------------------------------------------------------

@pytest.fixture(scope="session")
def real_artefact():
    """``real_artefact(name)`` -> the folder of a fetched artefact; skips the test with the reason when
    ``scripts/get_data.sh`` has not brought it (tests using it carry the ``real_data`` marker)."""
    from moonlit.common.data.real import artefact_dir, data_root, read_manifest

    def require(name: str) -> Path:
        folder = artefact_dir(name)
        if name not in read_manifest() or not folder.is_dir():
            pytest.skip(f"real data '{name}' is not in {data_root().resolve()}: run bash scripts/get_data.sh")
        return folder

    return require


# --- kill-and-resume tests ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def kill_resume():
    """``tests/common/kill_resume_driver.py`` as a module (run a recipe as a subprocess, SIGKILL, compare)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent / "common" / "kill_resume_driver.py"
    spec = importlib.util.spec_from_file_location("kill_resume_driver", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


# --- a tiny Fashion-MNIST (IDX files) ----------------------------------------------------------

@pytest.fixture(scope="session")
def fake_fashion_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root torchvision's ``FashionMNIST`` reads (``root/FashionMNIST/raw/{train,t10k}-*-ubyte``) with 5 train
    and 2 test images per class. Image ``i`` has label ``i % 10`` and is one constant grey
    level, ``20 * label + 3 * (i // 10) + 10``. IDX: bytes 0, 0, 0x08 (uint8), ndim; big-endian int32 dims; data."""
    import struct

    import numpy as np

    root = tmp_path_factory.mktemp("fashion_mnist")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, per_class in (("train", 5), ("t10k", 2)):
        labels = np.arange(10 * per_class) % 10
        images = np.stack([np.full((28, 28), 20 * label + 3 * (i // 10) + 10) for i, label in enumerate(labels)])
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + array.astype(np.uint8).tobytes())
    return root
