"""A generated GLUE-style task where token pruning should shine: signal tokens among distractors.

Each sentence is 10–60 words of distractors (a neutral vocabulary) with one to three *signal* words
planted at random positions. A signal word's polarity is flipped when a negator ("not", "never")
stands right before it (``negation_rate`` of the signals); all signals of a sentence have the same resulting polarity, which is the
label. Reading a signal therefore takes one layer of token interaction (the negator), so the
answer is not yet in [CLS] after the first layer: the signal tokens must survive until a later
layer reads them. A good pruner keeps them and drops the rest; random pruning loses them. Written in the SST-2 TSV layout (``SST-2/train.tsv``,
``dev.tsv``, ``test.tsv``), so the normal GLUE loader reads it as task ``sst2``.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ("superb", "delightful", "brilliant", "wonderful", "excellent", "charming", "gripping", "lovely")
NEGATIVE = ("dreadful", "tedious", "awful", "boring", "clumsy", "terrible", "bland", "painful")
NEGATORS = ("not", "never")
DISTRACTORS = (
    "table", "river", "window", "yellow", "seven", "walked", "paper", "garden", "quickly", "stone", "under",
    "between", "morning", "bottle", "across", "letter", "green", "small", "train", "corner", "music", "street",
    "after", "cloud", "number", "square", "often", "middle", "plate", "signal", "narrow", "village", "copper",
    "winter", "ticket", "button", "marble", "ladder", "engine", "pocket", "harbor", "candle", "forest", "mirror",
)


def signal_sentence(rng: random.Random, min_words: int, max_words: int, negation_rate: float = 0.3) -> tuple[str, int]:
    """One sentence and its label (1 = positive signal)."""
    length = rng.randint(min_words, max_words)
    words = [rng.choice(DISTRACTORS) for _ in range(length)]
    label = rng.random() < 0.5
    slots = list(range(1, length, 2))  # odd positions: the word before each is free for a negator
    for position in rng.sample(slots, k=min(len(slots), rng.randint(1, 3))):
        negated = rng.random() < negation_rate
        words[position] = rng.choice(NEGATIVE if label == negated else POSITIVE)
        if negated:
            words[position - 1] = rng.choice(NEGATORS)
    return " ".join(words), int(label)


def write_signal_task(root: str | Path, *, train: int = 2000, dev: int = 400, test: int = 100,
                      min_words: int = 10, max_words: int = 60, negation_rate: float = 0.3, seed: int = 0) -> Path:
    """Write ``root/SST-2/{train,dev,test}.tsv``; returns ``root`` (pass it as ``data_dir``)."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    rng = random.Random(seed)
    folder = Path(root) / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("dev", dev)):
        with open(folder / f"{name}.tsv", "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
            writer.writerow(["sentence", "label"])
            for _ in range(rows):
                writer.writerow(signal_sentence(rng, min_words, max_words, negation_rate))
    with open(folder / "test.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        writer.writerow(["index", "sentence"])
        for index in range(test):
            writer.writerow([index, signal_sentence(rng, min_words, max_words, negation_rate)[0]])
    return Path(root)


def write_signal_tokenizer(out_dir: str | Path) -> Path:
    """A BERT WordPiece tokenizer whose vocabulary is exactly this task's words (deterministic ids)."""
    from moonlit.common.data.synthetic import wordpiece_tokenizer_from_words

    return wordpiece_tokenizer_from_words(out_dir, sorted(set(POSITIVE + NEGATIVE + NEGATORS + DISTRACTORS)))
