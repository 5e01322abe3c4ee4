"""GLUE (Wang et al., ICLR 2019), the benchmark of ToP's Tables 2-4: task metadata, loading, tokenization.

``load_glue`` returns what ``datasets.load_dataset("nyu-mll/glue", config)`` returns: the same
split names, text columns, label ids (MNLI: entailment 0, neutral 1, contradiction 2; QNLI and
RTE: entailment 0, not_entailment 1; hidden test labels -1) and ``idx`` (the row's position in
its file). Without network it reads the classic GLUE download instead (``<Folder>/train.tsv``,
``dev.tsv``, ``test.tsv``; MNLI ``dev_matched.tsv`` ...), tab-separated without quoting, as the
Hub's own GLUE loading script does. Metrics live in ``glue_metrics``.

What a TSV file must be, exactly: UTF-8 text (an initial byte-order mark is dropped); lines end in
``\n``, ``\r\n`` or ``\r``; blank lines are skipped; a header row (except CoLA train/dev) naming the
task's columns; every row has as many tab-separated fields as the header; no field is longer than
the ``csv`` module's limit (131,072 characters; the limit is kept, GLUE sentences are far shorter).
Labels: STS-B ``score`` is a decimal ``[0-9]+(.[0-9]+)?`` in [0, 5]; a
classification label is one of the task's label names or its id written ``0`` … ``n-1``. Anything
else raises :class:`~moonlit.common.errors.InputError` naming the file, line and column.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import datasets
from moonlit.common.errors import InputError

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task as the Hub's ``nyu-mll/glue`` defines it; ``name`` is the Hub config name."""

    name: str
    folder: str  # folder of the classic GLUE download, e.g. "SST-2"
    aliases: tuple[str, ...]  # lower-case; matched case-insensitively
    text_keys: tuple[str, ...]  # one key, or two for sentence-pair tasks
    label_names: tuple[str, ...]  # empty for the regression task STS-B
    main_metric: str
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)

    @property
    def num_labels(self) -> int:
        """Classifier outputs: the number of classes, or 1 for regression."""
        return len(self.label_names) or 1

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def is_pair(self) -> bool:
        return len(self.text_keys) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.eval_splits, *self.test_splits)


# Main metrics are those ToP reports per task (its README's results table).
_TASKS = (
    GlueTask("cola", "CoLA", ("cola",), ("sentence",), ("unacceptable", "acceptable"),
             "matthews_correlation", ("matthews_correlation",)),
    GlueTask("sst2", "SST-2", ("sst2", "sst-2", "sst_2"), ("sentence",), ("negative", "positive"),
             "accuracy", ("accuracy",)),
    GlueTask("mrpc", "MRPC", ("mrpc",), ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
             "f1", ("accuracy", "f1")),
    GlueTask("qqp", "QQP", ("qqp",), ("question1", "question2"), ("not_duplicate", "duplicate"),
             "accuracy", ("accuracy", "f1")),
    GlueTask("stsb", "STS-B", ("stsb", "sts-b", "sts_b"), ("sentence1", "sentence2"), (),
             "pearson", ("pearson", "spearmanr")),
    GlueTask("mnli", "MNLI", ("mnli", "multinli"), ("premise", "hypothesis"),
             ("entailment", "neutral", "contradiction"), "accuracy", ("accuracy",),
             eval_splits=("validation_matched", "validation_mismatched"),
             test_splits=("test_matched", "test_mismatched")),
    GlueTask("qnli", "QNLI", ("qnli",), ("question", "sentence"), ("entailment", "not_entailment"),
             "accuracy", ("accuracy",)),
    GlueTask("rte", "RTE", ("rte",), ("sentence1", "sentence2"), ("entailment", "not_entailment"),
             "accuracy", ("accuracy",)),
)
GLUE_TASKS: Mapping[str, GlueTask] = MappingProxyType({task.name: task for task in _TASKS})
# Real single-sentence tasks beyond GLUE, written in the SST-2 layout by scripts/get_data.sh
# (moonlit.common.data.real): folders data/rt and data/spam. They have no Hub copy.
_LOCAL_TASKS = (
    # Their test splits are labelled, so they are reported beside dev.
    GlueTask("rt", "rt", ("rotten_tomatoes",), ("sentence",), ("rotten", "fresh"), "accuracy", ("accuracy",),
             eval_splits=("validation", "test"), test_splits=()),
    GlueTask("spam", "spam", ("spam_assassin",), ("sentence",), ("ham", "spam"), "accuracy", ("accuracy", "f1"),
             eval_splits=("validation", "test"), test_splits=()),
)
LOCAL_TASKS: Mapping[str, GlueTask] = MappingProxyType({task.name: task for task in _LOCAL_TASKS})
_BY_ALIAS = {alias: task for task in (*_TASKS, *_LOCAL_TASKS)
             for alias in (task.name, task.folder.lower(), *task.aliases)}


def get_glue_task(task: str | GlueTask) -> GlueTask:
    """The task for a name or alias (``"SST-2"``, ``"sst2"``, ``"sts-b"``, ...; case-insensitive)."""
    if isinstance(task, GlueTask):
        return task
    found = _BY_ALIAS.get(task.strip().lower()) if isinstance(task, str) else None
    if found is None:
        raise InputError(f"unknown GLUE task {task!r:.80}; expected one of {', '.join([*GLUE_TASKS, *LOCAL_TASKS])} "
                         f"(or the folder names {', '.join(t.folder for t in _TASKS)})")
    return found


@dataclass(frozen=True)
class _TsvFormat:
    """How one task is laid out in the classic GLUE download."""

    files: tuple[tuple[str, str], ...]  # (split, file name)
    text_columns: tuple[str, ...]  # the TSV column of each text key, in order
    label_column: str  # absent from test files, whose labels become -1
    headerless_files: tuple[str, ...] = ()
    headerless_columns: tuple[str, ...] = ()


_STANDARD_FILES = (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv"))
_FORMATS: Mapping[str, _TsvFormat] = {
    # CoLA train/dev are the only GLUE files without a header row.
    "cola": _TsvFormat(_STANDARD_FILES, ("sentence",), "label", ("train.tsv", "dev.tsv"),
                       ("source", "label", "original_label", "sentence")),
    "sst2": _TsvFormat(_STANDARD_FILES, ("sentence",), "label"),
    "mrpc": _TsvFormat(_STANDARD_FILES, ("#1 String", "#2 String"), "Quality"),
    "qqp": _TsvFormat(_STANDARD_FILES, ("question1", "question2"), "is_duplicate"),
    "stsb": _TsvFormat(_STANDARD_FILES, ("sentence1", "sentence2"), "score"),
    "mnli": _TsvFormat((("train", "train.tsv"), ("validation_matched", "dev_matched.tsv"),
                        ("validation_mismatched", "dev_mismatched.tsv"), ("test_matched", "test_matched.tsv"),
                        ("test_mismatched", "test_mismatched.tsv")), ("sentence1", "sentence2"), "gold_label"),
    "qnli": _TsvFormat(_STANDARD_FILES, ("question", "sentence"), "label"),
    "rte": _TsvFormat(_STANDARD_FILES, ("sentence1", "sentence2"), "label"),
    "rt": _TsvFormat(_STANDARD_FILES, ("sentence",), "label"),
    "spam": _TsvFormat(_STANDARD_FILES, ("sentence",), "label"),
}


def glue_features(task: str | GlueTask) -> datasets.Features:
    """The Hub's schema for a task: text columns, ``label`` (ClassLabel or float32), ``idx``."""
    spec = get_glue_task(task)
    features: dict[str, Any] = {key: datasets.Value("string") for key in spec.text_keys}
    features["label"] = datasets.Value("float32") if spec.is_regression \
        else datasets.ClassLabel(names=list(spec.label_names))
    features["idx"] = datasets.Value("int32")
    return datasets.Features(features)


_SCORE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
STSB_RANGE = (0.0, 5.0)


def _clip(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def _parse_label(value: str, spec: GlueTask, where: str) -> int | float:
    if spec.is_regression:
        low, high = STSB_RANGE
        if _SCORE.fullmatch(value) is None or len(value) > 20 or not low <= float(value) <= high:
            raise InputError(f"{where}: score {_clip(value)} is not a decimal number in [{low:g}, {high:g}] "
                             "(ASCII digits, e.g. 3.800)")
        return float(value)
    if value in spec.label_names:
        return spec.label_names.index(value)
    ids = [str(i) for i in range(spec.num_labels)]
    if value in ids:
        return int(value)
    raise InputError(f"{where}: label {_clip(value)} is not one of {list(spec.label_names)} "
                     f"or an id in 0..{spec.num_labels - 1}")


def _decoded(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 raises InputError naming its line."""
    data = path.read_bytes()
    try:
        # utf-8-sig: some GLUE files (MRPC) start with a byte-order mark before the header.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}, line {line}: byte {data[exc.start:exc.start + 1]!r} is not UTF-8 "
                         f"({exc.reason}); GLUE files are UTF-8 text") from None


def _rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """The reader's rows; the csv module's errors (a field over its size limit) become InputError."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}, line {reader.line_num}: {exc}; expected tab-separated UTF-8 text with "
                             f"fields of at most {csv.field_size_limit()} characters") from None
        yield row


def _read_tsv(path: Path, spec: GlueTask, fmt: _TsvFormat, labelled: bool, skip_malformed: bool) -> dict[str, list]:
    columns: dict[str, list] = {key: [] for key in (*spec.text_keys, "label", "idx")}
    skipped = 0
    reader = csv.reader(io.StringIO(_decoded(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = _rows(reader, path)
    header = list(fmt.headerless_columns) if path.name in fmt.headerless_files else \
        next((row for row in rows if row), None)  # blank lines before the header are skipped too
    if not header:
        raise InputError(f"{path} has no header row; expected a header row naming the columns "
                         f"{', '.join(fmt.text_columns)}")
    missing = [column for column in fmt.text_columns if column not in header]
    if missing:
        raise InputError(f"{path}: header {_clip(str(header), 200)} lacks the column(s) {missing} that "
                         f"{spec.folder} needs")
    text_positions = [header.index(column) for column in fmt.text_columns]
    label_position = header.index(fmt.label_column) if fmt.label_column in header else None
    if label_position is None and labelled:
        raise InputError(f"{path}: header {_clip(str(header), 200)} lacks the label column {fmt.label_column!r}")
    row_index = -1
    for row in rows:
        if not row:  # blank line
            continue
        row_index += 1  # like the Hub script, idx counts skipped rows too
        where = f"{path}, line {reader.line_num}"
        try:
            if len(row) != len(header):
                raise InputError(f"{where}: {len(row)} tab-separated fields, expected {len(header)} "
                                 f"({_clip(', '.join(header), 200)})")
            label = -1 if label_position is None else \
                _parse_label(row[label_position], spec, f"{where}, column {fmt.label_column!r}")
        except InputError:
            if not skip_malformed:
                raise
            skipped += 1
            continue
        for key, position in zip(spec.text_keys, text_positions):
            columns[key].append(row[position])
        columns["label"].append(label)
        columns["idx"].append(row_index)
    if skipped:
        logger.warning("skipped %d malformed rows of %s", skipped, path)
    return columns


def _task_folder(data_dir: Path, spec: GlueTask, fmt: _TsvFormat) -> Path:
    if not data_dir.is_dir():
        raise FileNotFoundError(f"GLUE data_dir {data_dir} does not exist or is not a folder")
    train_file = fmt.files[0][1]
    candidates = (data_dir / spec.folder, data_dir)
    for folder in candidates:
        if (folder / train_file).is_file():
            return folder
    expected = ", ".join(name for _, name in fmt.files)
    raise FileNotFoundError(f"no {spec.folder} data in {candidates[0]} or {candidates[1]}: expected the "
                            f"classic GLUE files {expected} in {candidates[0]} (or directly in {data_dir})")


def _load_from_hub(spec: GlueTask) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(HUB_DATASET, spec.name)
    except Exception as exc:  # offline failures come as many types (OSError, hub and datasets errors)
        raise ConnectionError(
            f"could not load {HUB_DATASET} config {spec.name!r} from the Hugging Face Hub, which is "
            f"likely unreachable ({type(exc).__name__}: {exc}); pass data_dir= pointing at the classic "
            f"GLUE download (data_dir/{spec.folder}/train.tsv, ...) instead") from exc


def load_glue(task: str | GlueTask, data_dir: str | Path | None = None, *,
              skip_malformed: bool = False) -> datasets.DatasetDict:
    """Load a GLUE task with the Hub's ``nyu-mll/glue`` splits and schema.

    With ``data_dir``, read the classic TSVs from ``data_dir/<Folder>/`` or from ``data_dir``
    itself; the training and evaluation files are required, test files are loaded when present.
    Without it, download from the Hub. A row with the wrong number of fields or a bad label
    raises ``InputError`` naming file and line, unless ``skip_malformed`` drops such rows (which
    is what the Hub's loading script does silently); bytes that are not UTF-8 and over-long fields
    always raise (file format in the module docstring).
    """
    spec = get_glue_task(task)
    if data_dir is None:
        if spec.name in LOCAL_TASKS:
            raise InputError(f"task {spec.name!r} has no Hub copy: run bash scripts/get_data.sh and pass "
                             f"data_dir= the data folder (it holds {spec.folder}/train.tsv)")
        return _load_from_hub(spec)
    fmt = _FORMATS[spec.name]
    folder = _task_folder(Path(data_dir), spec, fmt)
    splits: dict[str, datasets.Dataset] = {}
    for split, filename in fmt.files:
        path = folder / filename
        if not path.is_file():
            if split in spec.test_splits:
                logger.info("no %s in %s; loading %s without its %s split", filename, folder, spec.name, split)
                continue
            required = ", ".join(name for s, name in fmt.files if s not in spec.test_splits)
            raise FileNotFoundError(f"{path} not found; {spec.folder} needs {required} in {folder}")
        columns = _read_tsv(path, spec, fmt, split not in spec.test_splits, skip_malformed)
        splits[split] = datasets.Dataset.from_dict(columns, features=glue_features(spec), split=split)
    return datasets.DatasetDict(splits)


def tokenize_glue(
    dataset: datasets.DatasetDict | datasets.Dataset,
    tokenizer: Any,
    task: str | GlueTask,
    max_length: int = 128,
    padding: bool | str = "max_length",
) -> datasets.DatasetDict | datasets.Dataset:
    """Tokenize the task's text (as a pair for two-sentence tasks), truncating to ``max_length``.

    ``tokenizer`` is any Hugging Face tokenizer. The text columns are replaced by the tokenizer's
    outputs (``input_ids``, ``attention_mask``, and ``token_type_ids`` where the model has them);
    ``label`` and ``idx`` are kept. ``padding="max_length"`` gives fixed-shape batches, as
    HF's run_glue does by default; pass ``False`` to pad per batch with a collator instead.
    """
    spec = get_glue_task(task)
    if not isinstance(max_length, int) or max_length < 2:
        raise InputError(f"max_length must be an int >= 2 (room for the special tokens), got {max_length!r}")
    column_names = dataset.column_names
    per_split = column_names if isinstance(column_names, dict) else {"dataset": column_names}
    for split, names in per_split.items():
        missing = [key for key in spec.text_keys if key not in names]
        if missing:
            raise InputError(f"{spec.name} split {split!r} lacks the text column(s) {missing}; "
                             f"it has {names}")

    def encode(batch: dict[str, list]) -> Any:
        texts = [batch[key] for key in spec.text_keys]
        return tokenizer(*texts, max_length=max_length, truncation=True, padding=padding)

    return dataset.map(encode, batched=True, remove_columns=list(spec.text_keys),
                       desc=f"tokenizing {spec.name}")
