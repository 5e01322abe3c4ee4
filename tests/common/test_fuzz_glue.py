"""Property tests of the GLUE TSV reader: random file content ends in the rows an independent reader
finds, or in an InputError naming the file.

The independent reader here splits lines and tabs by hand (no ``csv`` module) and applies the label
rules stated in ``moonlit.common.data.glue``'s docstring: STS-B scores are ASCII decimals in [0, 5];
classification labels are a label name or an id ``0`` … ``n-1``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from moonlit.common.data.glue import GLUE_TASKS, load_glue
from moonlit.common.errors import InputError

STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"]
MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
TASKS = {  # task: (folder, header, text columns, label column)
    "sst2": ("SST-2", ["sentence", "label"], ["sentence"], "label"),
    "stsb": ("STS-B", STSB_HEADER, ["sentence1", "sentence2"], "score"),
    "mnli": ("MNLI", MNLI_HEADER, ["sentence1", "sentence2"], "gold_label"),
}
FIELD_LIMIT = 131_072


def reference_read(data: bytes, task: str) -> list[tuple] | None:
    """(texts..., label) per row, or None where the file breaks the documented format."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.removeprefix("\ufeff")
    lines = [line for line in re.split(r"\r\n|\n|\r", text) if line != ""]
    _, header, text_columns, label_column = TASKS[task]
    if not lines:
        return None
    found = lines[0].split("\t")
    if any(c not in found for c in [*text_columns, label_column]) or any(len(f) > FIELD_LIMIT for f in found):
        return None
    rows = []
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(found) or any(len(f) > FIELD_LIMIT for f in fields):
            return None
        value = fields[found.index(label_column)]
        spec = GLUE_TASKS[task]
        if task == "stsb":
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value) or len(value) > 20 or not 0 <= float(value) <= 5:
                return None
            label: float = float(value)
        elif value in spec.label_names:
            label = spec.label_names.index(value)
        elif value in [str(i) for i in range(spec.num_labels)]:
            label = int(value)
        else:
            return None
        rows.append((*(fields[found.index(c)] for c in text_columns), label))
    return rows


LABELS = {
    "sst2": ["0", "1", "negative", "positive"],
    "stsb": ["0", "5", "3.800", "0.000", "5.000", "2.5"],
    "mnli": ["entailment", "neutral", "contradiction", "0", "2"],
}
BAD_LABELS = ["-1", "99", "5.5", "5.001", "nan", "inf", "\u0663", "\uff12", "1_0", " 1", "1 ", "", "1e0", "01",
              "9" * 5000, "Positive", "+1", "-0"]
sentence = st.text(st.characters(blacklist_characters="\t\r\n", blacklist_categories=("Cs",)), max_size=30)


@st.composite
def tsv_files(draw: st.DrawFn) -> tuple[str, bytes]:
    task = draw(st.sampled_from(sorted(TASKS)))
    _, header, _, label_column = TASKS[task]
    lines = ["\t".join(header)]
    for index in range(draw(st.integers(0, 4))):
        fields = [draw(sentence) for _ in header]
        label_pool = LABELS[task] if draw(st.integers(0, 3)) else BAD_LABELS
        fields[header.index(label_column)] = draw(st.sampled_from(label_pool))
        lines.append("\t".join(fields))
    data = ("\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))).encode("utf-8")
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["byte", "insert", "delete", "long_field", "bom"]))
        i = draw(st.integers(0, len(data)))
        if op == "byte":
            data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
        elif op == "insert":
            inserted = draw(st.sampled_from([b"\t", b"\n", b"\r", b'"', b"\xff", b"\x00", b"\xd9\xa3"]))
            data = data[:i] + inserted + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + 1:]
        elif op == "long_field":
            data = data[:i] + b"x" * (FIELD_LIMIT + 10) + data[i:]
        elif op == "bom":
            data = b"\xef\xbb\xbf" + data
    return task, data


def test_random_tsv_content_gives_the_reference_rows_or_input_error(fuzz_settings, tmp_path: Path) -> None:
    @fuzz_settings
    @given(tsv_files())
    def check(example: tuple[str, bytes]) -> None:
        task, data = example
        folder = tmp_path / TASKS[task][0]
        folder.mkdir(exist_ok=True)
        for name in ("train.tsv", "dev.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
            (folder / name).write_bytes(data)
        expected = reference_read(data, task)
        try:
            split = load_glue(task, tmp_path)["train"]
        except InputError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 1000 and "train.tsv" in message, message
            assert expected is None, (data, message)
            return
        assert expected is not None, data
        text_keys = GLUE_TASKS[task].text_keys
        got = [(*(row[k] for k in text_keys), row["label"]) for row in split]
        if task == "stsb":  # stored as float32
            got = [(*row[:-1], pytest.approx(row[-1], abs=1e-6)) for row in got]
        assert [tuple(row) for row in got] == expected
    check()


@pytest.mark.parametrize("score", ["-1", "99", "5.5", "nan", "\u0663"])
def test_stsb_scores_outside_0_5_are_refused(tmp_path: Path, score: str) -> None:
    folder = tmp_path / "STS-B"
    folder.mkdir()
    row = ["0", "main-captions", "MSRvid", "2012test", "0", "none", "none", "A man.", "A dog.", score]
    (folder / "train.tsv").write_text("\t".join(STSB_HEADER) + "\n" + "\t".join(row) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("\t".join(STSB_HEADER) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"train.tsv, line 2, column 'score': score {re.escape(repr(score))} is "
                                         r"not a decimal number in \[0, 5\]"):
        load_glue("stsb", tmp_path)


def test_bad_bytes_and_long_fields_name_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n", encoding="utf-8")
    (folder / "train.tsv").write_bytes(b"sentence\tlabel\nfine\t1\nbad \xff byte\t0\n")
    with pytest.raises(InputError, match=r"train.tsv, line 3: byte b'\\xff' is not UTF-8"):
        load_glue("sst2", tmp_path)
    (folder / "train.tsv").write_text("sentence\tlabel\nfine\t1\n" + "x" * 140_000 + "\t0\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"train.tsv, line 3: field larger than field limit \(131072\)"):
        load_glue("sst2", tmp_path)
    (folder / "train.tsv").write_text("sentence\tlabel\nfine\t" + "1" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"line 2, column 'label': label '1111.*\(5000 characters\) is not one of"):
        load_glue("sst2", tmp_path)
