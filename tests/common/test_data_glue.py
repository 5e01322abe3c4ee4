"""moonlit.common.data.glue / glue_metrics: metadata, TSV loading, tokenization, metrics.

Expected values come from the files' text split with plain string operations, from the label
ids published for nyu-mll/glue, and from metric formulas written out by hand.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from moonlit.common.data import glue as glue_module
from moonlit.common.data.glue import GLUE_TASKS, get_glue_task, load_glue, tokenize_glue
from moonlit.common.data.glue_metrics import compute_glue_metrics

# Independent restatement of the classic GLUE layout and the Hub's label ids:
# task -> (folder, {split: file}, text columns, label column, {label text: id}).
_BINARY = {"0": 0, "1": 1}
_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
_NLI2 = {"entailment": 0, "not_entailment": 1}
_STD = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
LAYOUT = {
    "cola": ("CoLA", _STD, (3,), 1, _BINARY),  # headerless train/dev: positions, not names
    "sst2": ("SST-2", _STD, ("sentence",), "label", _BINARY),
    "mrpc": ("MRPC", _STD, ("#1 String", "#2 String"), "Quality", _BINARY),
    "qqp": ("QQP", _STD, ("question1", "question2"), "is_duplicate", _BINARY),
    "stsb": ("STS-B", _STD, ("sentence1", "sentence2"), "score", None),
    "mnli": ("MNLI", {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                      "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
                      "test_mismatched": "test_mismatched.tsv"}, ("sentence1", "sentence2"), "gold_label", _NLI3),
    "qnli": ("QNLI", _STD, ("question", "sentence"), "label", _NLI2),
    "rte": ("RTE", _STD, ("sentence1", "sentence2"), "label", _NLI2),
}
HF_TEXT_KEYS = {"cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"),
                "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"),
                "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2")}


def parse_by_hand(path: Path, task: str, split: str) -> tuple[list[tuple[str, ...]], list[float]]:
    """Texts and expected label ids of a GLUE TSV, using only str.split."""
    _, _, text_cols, label_col, label_ids = LAYOUT[task]
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line]
    headerless = task == "cola" and not split.startswith("test")
    if task == "cola" and split == "test":
        text_cols, label_col = ("sentence",), "label"
    header = None if headerless else lines[0].split("\t")
    rows = [line.split("\t") for line in (lines if headerless else lines[1:])]

    def column(name: str | int) -> int:
        return name if isinstance(name, int) else header.index(name)

    texts = [tuple(row[column(c)] for c in text_cols) for row in rows]
    if split.startswith("test"):
        return texts, [-1] * len(rows)
    raw = [row[column(label_col)] for row in rows]
    return texts, [float(v) if label_ids is None else label_ids[v] for v in raw]


@pytest.mark.parametrize("task", list(LAYOUT))
def test_load_glue_matches_file_text(synthetic_glue_root: Path, task: str) -> None:
    folder, files, *_ = LAYOUT[task]
    loaded = load_glue(task, synthetic_glue_root)
    assert list(loaded) == list(files)
    for split, filename in files.items():
        texts, labels = parse_by_hand(synthetic_glue_root / folder / filename, task, split)
        ds = loaded[split]
        assert len(ds) == len(texts) == {"train": 200, "test": 10}.get(split.split("_")[0], 40)
        assert ds.column_names == [*HF_TEXT_KEYS[task], "label", "idx"]
        for j, key in enumerate(HF_TEXT_KEYS[task]):
            assert list(ds[key]) == [t[j] for t in texts]
        np.testing.assert_allclose(ds["label"], labels, rtol=1e-6)
        assert list(ds["idx"]) == list(range(len(texts)))


def test_quoted_fields_are_read_literally(tmp_path: Path, synthetic_glue_root: Path) -> None:
    folder = tmp_path / "SST-2"
    folder.mkdir()
    sentences = ['"unbalanced opening quote', 'he said "hi" twice', '"fully quoted"', "it 's fine"]
    body = "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences))
    (folder / "train.tsv").write_text("sentence\tlabel\n" + body, encoding="utf-8")
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + body, encoding="utf-8")
    loaded = load_glue("sst2", tmp_path)
    assert list(loaded["train"]["sentence"]) == sentences
    assert list(loaded["train"]["label"]) == [0, 1, 0, 1]
    assert "test" not in loaded  # the test file is optional
    # the generated data exercises the same case: some fields open with a quote
    premises = list(load_glue("mnli", synthetic_glue_root)["train"]["premise"])
    sst = list(load_glue("sst2", synthetic_glue_root)["train"]["sentence"])
    assert any(s.startswith('"') for s in premises + sst)


def test_mrpc_byte_order_mark_and_task_folder_as_data_dir(tmp_path: Path, synthetic_glue_root: Path) -> None:
    folder = shutil.copytree(synthetic_glue_root / "MRPC", tmp_path / "mrpc_copy")
    train = folder / "train.tsv"
    train.write_text("\ufeff" + train.read_text(encoding="utf-8"), encoding="utf-8")
    direct = load_glue("MRPC", folder)
    reference = load_glue("mrpc", synthetic_glue_root)
    assert list(direct["train"]["label"]) == list(reference["train"]["label"])
    assert list(direct["train"]["sentence1"]) == list(reference["train"]["sentence1"])


def test_features_follow_hub_schema(synthetic_glue_root: Path) -> None:
    mnli = load_glue("mnli", synthetic_glue_root)["train"].features
    assert mnli["label"].names == ["entailment", "neutral", "contradiction"]
    assert mnli["idx"].dtype == "int32"
    assert load_glue("qnli", synthetic_glue_root)["train"].features["label"].names == ["entailment", "not_entailment"]
    assert load_glue("stsb", synthetic_glue_root)["train"].features["label"].dtype == "float32"


@pytest.mark.parametrize("alias, name", [("SST-2", "sst2"), ("sst2", "sst2"), ("Sst-2", "sst2"), ("sts-b", "stsb"),
                                         ("STSB", "stsb"), ("MNLI", "mnli"), ("cola", "cola"), ("QQP", "qqp")])
def test_aliases(alias: str, name: str) -> None:
    assert get_glue_task(alias).name == name


def test_task_metadata() -> None:
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"}
    assert {name: t.num_labels for name, t in GLUE_TASKS.items()} == {
        "cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "stsb": 1, "mnli": 3, "qnli": 2, "rte": 2}
    assert {name: t.text_keys for name, t in GLUE_TASKS.items()} == HF_TEXT_KEYS
    assert GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert GLUE_TASKS["stsb"].is_regression and not GLUE_TASKS["cola"].is_regression
    assert GLUE_TASKS["cola"].main_metric == "matthews_correlation"
    assert set(GLUE_TASKS["mrpc"].metrics) == {"accuracy", "f1"}
    for task in GLUE_TASKS.values():
        assert task.main_metric in task.metrics


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown GLUE task 'wnli'") as info:
        get_glue_task("wnli")
    assert all(name in str(info.value) for name in GLUE_TASKS)


def test_missing_folder_and_files(tmp_path: Path, synthetic_glue_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_glue("rte", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as info:
        load_glue("rte", tmp_path)
    assert "RTE" in str(info.value) and "train.tsv" in str(info.value) and "dev.tsv" in str(info.value)
    folder = shutil.copytree(synthetic_glue_root / "MNLI", tmp_path / "MNLI")
    (folder / "dev_mismatched.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="dev_mismatched.tsv"):
        load_glue("mnli", tmp_path)


def test_malformed_rows(tmp_path: Path) -> None:
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n", encoding="utf-8")
    train = folder / "train.tsv"
    train.write_text("sentence\tlabel\nfine\t1\ntoo\tmany\tfields\nok\t0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: 3 tab-separated fields, expected 2"):
        load_glue("sst2", tmp_path)
    skipped = load_glue("sst2", tmp_path, skip_malformed=True)["train"]
    assert list(skipped["sentence"]) == ["fine", "ok"] and list(skipped["idx"]) == [0, 2]
    train.write_text("sentence\tsentiment\nfine\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks the label column 'label'"):
        load_glue("sst2", tmp_path)
    train.write_text("sentence\tlabel\nfine\t2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2, column 'label': label '2' is not one of \['negative', 'positive'\]"):
        load_glue("sst2", tmp_path)


def test_hub_failure_suggests_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def unreachable(*args: object) -> None:
        calls.append(args)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(glue_module.datasets, "load_dataset", unreachable)
    with pytest.raises(ConnectionError, match="data_dir") as info:
        load_glue("SST-2")
    assert calls == [("nyu-mll/glue", "sst2")]
    assert "couldn't connect" in str(info.value)


def _untruncated_lengths(tokenizer, ds, keys) -> list[int]:
    return [len(tokenizer(*(row[k] for k in keys))["input_ids"]) for row in ds]


@pytest.mark.parametrize("task", ["sst2", "mnli"])
def test_tokenize_truncates_at_max_length(synthetic_glue_root: Path, wordpiece_tokenizer_dir: Path, task: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(wordpiece_tokenizer_dir))
    raw = load_glue(task, synthetic_glue_root)
    encoded = tokenize_glue(raw, tokenizer, task, max_length=128)
    train = encoded["train"]
    assert set(train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "label", "idx"}
    assert list(train["label"]) == list(raw["train"]["label"])
    full = _untruncated_lengths(tokenizer, raw["train"], HF_TEXT_KEYS[task])
    assert max(full) > 128, "the fixture should contain sentences that need truncation"
    assert all(len(ids) == 128 for ids in list(train["input_ids"]))
    assert [sum(mask) for mask in list(train["attention_mask"])] == [min(n, 128) for n in full]
    for ids, n in zip(list(train["input_ids"]), full):
        if n > 128:
            assert ids[-1] == tokenizer.sep_token_id
    has_segment_b = [1 in types for types in list(train["token_type_ids"])]
    assert all(has_segment_b) if task == "mnli" else not any(has_segment_b)
    validation = raw[get_glue_task(task).eval_splits[0]]
    dynamic = tokenize_glue(validation, tokenizer, task, max_length=64, padding=False)
    lengths = _untruncated_lengths(tokenizer, validation, HF_TEXT_KEYS[task])
    assert [len(ids) for ids in list(dynamic["input_ids"])] == [min(n, 64) for n in lengths]


def test_tokenize_with_roberta_and_bad_columns(synthetic_glue_root: Path, tiny_roberta_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_roberta_dir))
    raw = load_glue("rte", synthetic_glue_root)
    encoded = tokenize_glue(raw["validation"], tokenizer, "rte", max_length=32)
    first = tokenizer(raw["validation"][0]["sentence1"], raw["validation"][0]["sentence2"], truncation=True,
                      max_length=32, padding="max_length")["input_ids"]
    assert encoded[0]["input_ids"] == first
    with pytest.raises(ValueError, match=r"lacks the text column\(s\) \['premise', 'hypothesis'\]"):
        tokenize_glue(raw, tokenizer, "mnli")


def test_sst2_rule_is_learnable_by_bag_of_words(synthetic_glue_root: Path) -> None:
    data = load_glue("sst2", synthetic_glue_root)
    vectorizer = CountVectorizer(token_pattern=r"[a-z]+")
    x_train = vectorizer.fit_transform(list(data["train"]["sentence"]))
    model = LogisticRegression(max_iter=1000).fit(x_train, list(data["train"]["label"]))
    accuracy = model.score(vectorizer.transform(list(data["validation"]["sentence"])), list(data["validation"]["label"]))
    assert accuracy >= 0.85  # chance is ~0.55


# --- metrics -------------------------------------------------------------------------------------

def _confusion(y: np.ndarray, p: np.ndarray) -> tuple[int, int, int, int]:
    return (int(np.sum((p == 1) & (y == 1))), int(np.sum((p == 0) & (y == 0))),
            int(np.sum((p == 1) & (y == 0))), int(np.sum((p == 0) & (y == 1))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_hand_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 97)
    logits = rng.normal(size=(97, 2)) + 0.8 * np.eye(2)[labels]  # better than chance
    preds = logits.argmax(1)
    tp, tn, fp, fn = _confusion(labels, preds)
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    f1 = 2 * tp / (2 * tp + fp + fn)
    accuracy = (tp + tn) / len(labels)
    assert compute_glue_metrics("cola", logits, labels) == pytest.approx({"matthews_correlation": mcc})
    assert compute_glue_metrics("mrpc", logits, labels) == pytest.approx({"accuracy": accuracy, "f1": f1})
    assert compute_glue_metrics("qqp", preds, labels) == pytest.approx({"accuracy": accuracy, "f1": f1})
    assert compute_glue_metrics("sst2", preds.astype(float), labels) == pytest.approx({"accuracy": accuracy})


def test_multiclass_accuracy_and_regression_correlations() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 50)
    logits = rng.normal(size=(50, 3))
    expected = np.mean([np.argmax(row) == y for row, y in zip(logits, labels)])
    assert compute_glue_metrics("mnli", logits, labels) == {"accuracy": pytest.approx(expected)}

    scores = rng.uniform(0, 5, 40)
    predictions = scores + rng.normal(0, 1.0, 40)
    pearson = np.sum((predictions - predictions.mean()) * (scores - scores.mean())) / (
        np.sqrt(np.sum((predictions - predictions.mean()) ** 2)) * np.sqrt(np.sum((scores - scores.mean()) ** 2)))
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731  (no ties in continuous data)
    spearman = np.corrcoef(ranks(predictions), ranks(scores))[0, 1]
    result = compute_glue_metrics("stsb", predictions[:, None], scores)
    assert result == pytest.approx({"pearson": pearson, "spearmanr": spearman})
    assert result["spearmanr"] == pytest.approx(stats.spearmanr(predictions, scores)[0])


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="hidden test labels"):
        compute_glue_metrics("rte", [0, 1], [-1, -1])
    with pytest.raises(ValueError, match="logits have 2 columns, expected 3"):
        compute_glue_metrics("mnli", np.zeros((4, 2)), [0, 1, 2, 0])
    with pytest.raises(ValueError, match="integers in 0..1"):
        compute_glue_metrics("sst2", [0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="2 predictions but 3 labels"):
        compute_glue_metrics("sst2", [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="negative values"):
        compute_glue_metrics("stsb", [1.0, 2.0], [-1.0, -1.0])


def test_local_sentence_tasks_read_the_sst2_layout(tmp_path):
    from moonlit.common.data.glue import LOCAL_TASKS

    folder = tmp_path / "spam"
    folder.mkdir()
    for name, rows in (("train", "offer now\t1\nhi bob\t0\n"), ("dev", "meet at 10\t0\n"), ("test", "win\t1\n")):
        (folder / f"{name}.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    loaded = load_glue("spam", data_dir=tmp_path)
    assert loaded["train"]["label"] == [1, 0] and loaded["test"]["label"] == [1]
    assert loaded["train"].features["label"].names == ["ham", "spam"]
    assert set(LOCAL_TASKS) == {"rt", "spam"} and not set(LOCAL_TASKS) & set(GLUE_TASKS)
    with pytest.raises(ValueError, match="no Hub copy"):
        load_glue("rt")
