"""moonlit.common.data.synthetic: fixture writers are deterministic, follow their rules, and load.

Rules are checked on the written text with string operations; learnability with scikit-learn
models that know nothing about the generator.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moonlit.common.data import synthetic_glue
from moonlit.common.data.synthetic import (
    IMAGE_COLOURS,
    IMAGE_SHAPES,
    image_class_names,
    write_glue_tsvs,
    write_image_folder,
    write_tiny_bert,
    write_tiny_roberta,
)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path, header: bool = True) -> list[list[str]]:
    lines = [line.split("\t") for line in path.read_text(encoding="utf-8").split("\n") if line]
    return lines[1:] if header else lines


# --- GLUE ------------------------------------------------------------------------------------------

def test_glue_writer_counts_determinism_and_task_subset(tmp_path: Path) -> None:
    counts = {"train": 7, "dev": 3, "test": 2}
    a = write_glue_tsvs(tmp_path / "a", tasks=["SST-2", "mnli"], rows_per_split=counts, seed=5)
    b = write_glue_tsvs(tmp_path / "b", tasks=["sst2", "MNLI"], rows_per_split=counts, seed=5)
    c = write_glue_tsvs(tmp_path / "c", tasks=["sst2", "mnli"], rows_per_split=counts, seed=6)
    only_sst = write_glue_tsvs(tmp_path / "d", tasks=["sst2"], rows_per_split=counts, seed=5)
    assert sorted(p.name for p in a.iterdir()) == ["MNLI", "SST-2"]
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert _digest(only_sst).items() <= _digest(a).items()  # one task's files do not depend on the others
    expected = {"SST-2/train.tsv": 7, "SST-2/dev.tsv": 3, "SST-2/test.tsv": 2, "MNLI/train.tsv": 7,
                "MNLI/dev_matched.tsv": 3, "MNLI/dev_mismatched.tsv": 3, "MNLI/test_matched.tsv": 2,
                "MNLI/test_mismatched.tsv": 2}
    assert {name: len(_rows(a / name)) for name in expected} == expected


def test_glue_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown GLUE task 'snli'"):
        write_glue_tsvs(tmp_path, tasks=["snli"])
    with pytest.raises(ValueError, match="rows_per_split"):
        write_glue_tsvs(tmp_path, rows_per_split={"train": 5})


def test_glue_label_rules_hold_in_the_files(synthetic_glue_root: Path) -> None:
    root = synthetic_glue_root
    for sentence, label in _rows(root / "SST-2" / "train.tsv"):
        words = sentence.replace('"', " ").split()
        positive = sum(w in synthetic_glue._POSITIVE for w in words)
        negative = sum(w in synthetic_glue._NEGATIVE for w in words)
        assert label == str(int(positive > negative)) and positive != negative
    for source, label, marker, sentence in _rows(root / "CoLA" / "train.tsv", header=False):
        assert marker == ("" if label == "1" else "*")
        assert (" the the " in sentence) <= (label == "0")
    negations = (" not ", " never ", "Nobody ")
    for row in _rows(root / "MNLI" / "dev_matched.tsv"):
        hypothesis, votes, gold = row[9], row[10:15], row[15]
        assert votes.count(gold) >= 3 and votes[0] == gold
        assert any(n in hypothesis for n in negations) == (gold == "contradiction")
    scores = [float(row[-1]) for row in _rows(root / "STS-B" / "train.tsv")]
    assert 0.0 <= min(scores) and max(scores) <= 5.0 and np.std(scores) > 1.0  # graded, not binary
    identical = [float(r[-1]) for r in _rows(root / "STS-B" / "train.tsv")
                 if r[7] == r[8] and not any(s in r[8] for s in synthetic_glue._SYNONYMS.values())]
    assert identical and min(identical) > 4.4  # unchanged pairs score ~5


def test_glue_sentence_lengths_are_skewed(synthetic_glue_root: Path) -> None:
    texts = [row[0] for row in _rows(synthetic_glue_root / "SST-2" / "train.tsv")]
    texts += [row[8] for row in _rows(synthetic_glue_root / "MNLI" / "train.tsv")]
    lengths = np.array([len(t.split()) for t in texts])
    assert np.median(lengths) < 20
    assert 0 < np.mean(lengths > 100) < 0.1  # a thin tail of very long sentences


# --- tokenizers and tiny models --------------------------------------------------------------------

def test_tokenizers_load_and_cover_the_text(wordpiece_tokenizer_dir: Path, tiny_roberta_dir: Path) -> None:
    from transformers import AutoTokenizer

    sentences = synthetic_glue.synthetic_sentences(50, seed=3)
    bert = AutoTokenizer.from_pretrained(str(wordpiece_tokenizer_dir))
    assert "Bert" in type(bert).__name__ and bert.model_max_length == 512
    assert all(bert.unk_token_id not in bert(s)["input_ids"] for s in sentences)
    pair = bert("a b", "c")
    assert pair["input_ids"][0] == bert.cls_token_id and pair["input_ids"].count(bert.sep_token_id) == 2
    roberta = AutoTokenizer.from_pretrained(str(tiny_roberta_dir))
    assert "Roberta" in type(roberta).__name__
    assert (roberta.bos_token_id, roberta.pad_token_id, roberta.eos_token_id) == (0, 1, 2)
    for s in sentences:  # byte-level BPE is lossless
        assert roberta.decode(roberta(s)["input_ids"], skip_special_tokens=True) == s


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_tiny_models_load_and_give_logits(kind: str, tiny_bert_dir: Path, tiny_roberta_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = tiny_bert_dir if kind == "bert" else tiny_roberta_dir
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert kind in model.config.model_type
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads,
            model.config.intermediate_size) == (64, 2, 2, 128)
    batch = tokenizer(["Alice bought the old camera.", "The film is dull ."], ["x", "y"], padding="max_length",
                      max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_tiny_model_options_and_determinism(tmp_path: Path, wordpiece_tokenizer_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    def weights(path: Path) -> dict[str, torch.Tensor]:
        return AutoModelForSequenceClassification.from_pretrained(str(path)).state_dict()

    kwargs = dict(num_labels=1, num_layers=3, num_heads=4, tokenizer_dir=wordpiece_tokenizer_dir)
    a = weights(write_tiny_bert(tmp_path / "a", seed=1, **kwargs))
    b = weights(write_tiny_bert(tmp_path / "b", seed=1, **kwargs))
    c = weights(write_tiny_bert(tmp_path / "c", seed=2, **kwargs))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "a"))
    assert model.config.num_hidden_layers == 3 and model.config.num_attention_heads == 4
    assert model(input_ids=torch.tensor([[2, 10, 11, 3]])).logits.shape == (1, 1)  # regression head
    with pytest.raises(ValueError, match="hidden_size 64 is not divisible by num_heads 3"):
        write_tiny_roberta(tmp_path / "d", num_heads=3)


# --- images ----------------------------------------------------------------------------------------

def test_image_folder_layout_and_determinism(tmp_path: Path) -> None:
    size = {"num_classes": 3, "images_per_class": {"train": 4, "val": 2}, "image_size": 24}
    a = write_image_folder(tmp_path / "a", **size, seed=1)
    b = write_image_folder(tmp_path / "b", **size, seed=1)
    c = write_image_folder(tmp_path / "c", **size, seed=2)
    assert _digest(a) == _digest(b) and _digest(a) != _digest(c)
    names = ["00_red_circle", "01_green_square", "02_blue_triangle"]
    for split, count in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (a / split).iterdir()) == names
        for name in names:
            files = sorted((a / split / name).glob("*.jpg"))
            assert len(files) == count
            assert Image.open(files[0]).size == (24, 24) and Image.open(files[0]).mode == "RGB"


def test_image_class_names_cover_all_shape_colour_pairs() -> None:
    names = image_class_names(len(IMAGE_SHAPES) * len(IMAGE_COLOURS))
    pairs = {tuple(name.split("_")[1:]) for name in names}
    assert pairs == {(c, s) for c in IMAGE_COLOURS for s in IMAGE_SHAPES}
    with pytest.raises(ValueError, match="num_classes must be in 1..42"):
        image_class_names(43)


def test_image_folder_single_count_and_bad_counts(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "a", num_classes=2, images_per_class=3, image_size=16)
    assert [len(list((root / split).rglob("*.jpg"))) for split in ("train", "val")] == [6, 6]
    with pytest.raises(ValueError, match="images_per_class must be"):
        write_image_folder(tmp_path / "b", images_per_class={"train": 3})


def _pixels(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    for label, folder in enumerate(sorted((root / split).iterdir())):
        for path in sorted(folder.glob("*.jpg")):
            image = Image.open(path).convert("RGB").resize((8, 8), Image.BILINEAR)
            features.append(np.asarray(image, dtype=np.float32).ravel() / 255.0)
            labels.append(label)
    return np.stack(features), np.array(labels)


def test_image_rule_is_learnable(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    # 8 classes: 8 > 7 colours, so classes 0 and 7 share a colour and differ only in shape
    root = write_image_folder(tmp_path, num_classes=8, images_per_class={"train": 20, "val": 10},
                              image_size=32, seed=0)
    x_train, y_train = _pixels(root, "train")
    x_val, y_val = _pixels(root, "val")
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    assert model.score(x_val, y_val) >= 0.6  # chance is 0.125


def test_fixtures_app_checks_the_seed_before_writing(tmp_path: Path) -> None:
    from moonlit.common.config import compose_config
    from moonlit.common.data.synthetic import run
    from moonlit.common.errors import InputError

    with pytest.raises(InputError, match="seed must be an integer, got 'abc'"):
        run(compose_config("common", "synthetic", [f"out_dir={tmp_path / 'bad'}", "seed=abc"]))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # tokenizers and two tiny models: about 30 s on a busy core
def test_fixtures_app_writes_the_quickstart_set(tmp_path: Path) -> None:
    from moonlit.common.config import compose_config
    from moonlit.common.data.synthetic import run

    written = run(compose_config("common", "synthetic", [f"out_dir={tmp_path / 'set'}"]))
    assert written == {name: tmp_path / "set" / name for name in ("imagenet", "glue", "bert-tiny", "roberta-tiny")}
    train = sorted((tmp_path / "set" / "imagenet" / "train").iterdir())
    assert [p.name for p in train] == image_class_names(10)  # 10 classes, 40 training images each
    assert all(len(list(folder.glob("*.jpg"))) == 40 for folder in train)
    assert len(_rows(tmp_path / "set" / "glue" / "SST-2" / "dev.tsv")) == 200
    assert (tmp_path / "set" / "bert-tiny" / "config.json").is_file()
