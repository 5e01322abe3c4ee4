"""Synthetic GLUE: the eight GLUE tasks (Wang et al., ICLR 2019) written in the classic download layout.

The real GLUE data cannot be downloaded here, so tests and the quickstart feed ``load_glue`` with
these files instead. They keep the exact folder, file and column layout of the GLUE zips
(``CoLA/train.tsv`` without a header, ``MNLI/dev_matched.tsv`` with five annotator labels, ...),
written tab-separated with no quoting (csv ``QUOTE_NONE``, as GLUE itself), and some text carries
literal double quotes, so a reader that honours quotes fails on them.

Labels follow rules a small model can learn:

* CoLA  unacceptable = one local error (subject-verb agreement, doubled determiner, verb-final order)
* SST-2 positive = more positive than negative sentiment words
* MRPC, QQP  equivalent / duplicate = same (subject, verb, object) up to synonyms and rewording
* STS-B  score = 5 x share of the five content slots kept, plus N(0, 0.15) noise, clipped to [0, 5]
* MNLI  entailment = hypothesis restates the premise's core; contradiction = negated core;
  neutral = the core plus information the premise does not contain
* QNLI  entailment = the sentence has the question's subject, verb and object
* RTE   the MNLI rule with neutral and contradiction merged into not_entailment

Lengths are skewed like real text: the number of modifier phrases is geometric (mostly 0-2), and
3 % of first sentences are run-ons of 35-60 phrases, long enough to be truncated at 128 tokens.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .glue import GLUE_TASKS, get_glue_task

_NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack",
          "Karen", "Leo", "Maria", "Noah", "Olivia", "Peter", "Rosa", "Sam", "Tina", "Victor")
_PEOPLE = (("teacher", "teachers"), ("doctor", "doctors"), ("farmer", "farmers"),
           ("student", "students"), ("child", "children"), ("artist", "artists"),
           ("driver", "drivers"), ("pilot", "pilots"), ("baker", "bakers"), ("nurse", "nurses"),
           ("singer", "singers"), ("lawyer", "lawyers"), ("neighbour", "neighbours"))
_OBJECTS = ("book", "car", "letter", "song", "house", "garden", "bridge", "painting", "report",
            "window", "bicycle", "camera", "ticket", "map", "lamp", "boat", "piano", "table",
            "jacket", "phone", "kite", "basket")
# (base, third person singular, past, past participle)
_VERBS = (("buy", "buys", "bought", "bought"), ("see", "sees", "saw", "seen"),
          ("paint", "paints", "painted", "painted"), ("build", "builds", "built", "built"),
          ("fix", "fixes", "fixed", "fixed"), ("sell", "sells", "sold", "sold"),
          ("find", "finds", "found", "found"), ("carry", "carries", "carried", "carried"),
          ("open", "opens", "opened", "opened"), ("clean", "cleans", "cleaned", "cleaned"),
          ("watch", "watches", "watched", "watched"), ("borrow", "borrows", "borrowed", "borrowed"),
          ("draw", "draws", "drew", "drawn"), ("move", "moves", "moved", "moved"),
          ("lose", "loses", "lost", "lost"), ("describe", "describes", "described", "described"))
_ADJECTIVES = ("old", "new", "small", "large", "red", "blue", "wooden", "heavy", "quiet",
               "bright", "famous", "broken")
_PLACES = ("in the park", "at the station", "near the river", "in the city", "on the hill",
           "by the sea", "at the market", "in the library", "behind the school", "across the street")
_TIMES = ("yesterday", "last week", "on Monday", "this morning", "in the evening", "last year",
          "at noon")
_ADVERBS = ("quickly", "slowly", "carefully", "quietly", "happily", "suddenly", "finally")
_REASONS = ("it was raining", "the shop was closed", "a friend asked for help",
            "the price was low", "the old one was broken")
# Paraphrase substitutions: meaning-preserving, so they never change a label.
_SYNONYMS = {"bought": "purchased", "fixed": "repaired", "saw": "noticed", "large": "big",
             "small": "little", "quickly": "rapidly", "car": "automobile", "house": "home",
             "yesterday": "the day before", "children": "kids", "finally": "at last",
             "famous": "well known", "buy": "purchase", "fix": "repair", "see": "notice"}
_POSITIVE = ("wonderful", "brilliant", "delightful", "excellent", "charming", "moving", "superb",
             "enjoyable", "beautiful", "clever", "fresh", "funny", "touching", "gripping")
_NEGATIVE = ("terrible", "boring", "awful", "dull", "tedious", "clumsy", "bland", "painful",
             "weak", "lifeless", "annoying", "mediocre", "shallow", "messy")
_FILM = ("film", "movie", "story", "script", "picture", "drama", "comedy")
_FILLERS = ("the director", "in the second half", "from start to finish", "for most of its running time",
            "with a cast of unknowns", "despite the long opening", "as the credits roll",
            "for the whole family", "in every scene")
_COLA_SOURCES = ("gj04", "bc01", "ks08", "r-67", "c_13", "m_02", "w_80", "l-93")
_STSB_SOURCES = (("main-captions", "MSRvid", "2012test"), ("main-news", "headlines", "2014"),
                 ("main-forums", "deft-forum", "2014"), ("main-captions", "images", "2015"))
_MNLI_GENRES = {"matched": ("fiction", "government", "slate", "telephone", "travel"),
                "mismatched": ("facetoface", "letters", "nineeleven", "oup", "verbatim")}
_LONG_SENTENCE_PROB = 0.03


@dataclass(frozen=True)
class _Core:
    """The content slots of one clause; the label rules compare these, never surface strings."""

    subject: str
    plural: bool
    verb: tuple[str, str, str, str]
    adjective: str
    obj: str
    place: str
    time: str


class _TextGen:
    """Sentences over a closed vocabulary, drawn from one seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def subject(self) -> tuple[str, bool]:
        if self.rng.random() < 0.5:
            return self.rng.choice(_NAMES), False
        plural = self.rng.random() < 0.4
        return "the " + self.rng.choice(_PEOPLE)[int(plural)], plural

    def core(self) -> _Core:
        subject, plural = self.subject()
        return _Core(subject, plural, self.rng.choice(_VERBS), self.rng.choice(_ADJECTIVES),
                     self.rng.choice(_OBJECTS), self.rng.choice(_PLACES), self.rng.choice(_TIMES))

    def changed(self, core: _Core, slots: Iterable[str]) -> _Core:
        """``core`` with each named slot redrawn to a different value."""
        pools = {"subject": None, "verb": _VERBS, "adjective": _ADJECTIVES, "obj": _OBJECTS,
                 "place": _PLACES, "time": _TIMES}
        for slot in slots:
            while True:
                if slot == "subject":
                    subject, plural = self.subject()
                    new = replace(core, subject=subject, plural=plural)
                else:
                    new = replace(core, **{slot: self.rng.choice(pools[slot])})
                if getattr(new, slot) != getattr(core, slot):
                    core = new
                    break
        return core

    def modifier(self, quotes: bool = True) -> str:
        kind = self.rng.randrange(8 if quotes else 3)
        if kind == 0:
            return self.rng.choice(_PLACES)
        if kind == 1:
            return self.rng.choice(_TIMES)
        if kind == 2:
            return self.rng.choice(_ADVERBS)
        if kind == 3:
            return "with " + self.rng.choice(_NAMES)
        if kind == 4:
            return f"because the {self.rng.choice(_OBJECTS)} was {self.rng.choice(_ADJECTIVES)}"
        if kind == 5:
            return f"while {self.rng.choice(_NAMES)} {self.rng.choice(_VERBS)[2]} the {self.rng.choice(_OBJECTS)}"
        if kind == 6:
            return f"near {self.rng.choice(_NAMES)}'s {self.rng.choice(_OBJECTS)}"
        return f', saying "the {self.rng.choice(_OBJECTS)} is {self.rng.choice(_ADJECTIVES)}"'

    def count(self, p_stop: float, long_tail: bool = True) -> int:
        """Geometric number of phrases, or with a small probability a run-on of 35-60."""
        if long_tail and self.rng.random() < _LONG_SENTENCE_PROB:
            return self.rng.randint(35, 60)
        count = 0
        while self.rng.random() > p_stop:
            count += 1
        return count

    def modifiers(self, p_stop: float = 0.5, long_tail: bool = True, quotes: bool = True) -> list[str]:
        return [self.modifier(quotes) for _ in range(self.count(p_stop, long_tail))]

    def clause(self, core: _Core, mods: Sequence[str] = ()) -> str:
        """A past-tense sentence stating every slot of ``core``, then the modifiers."""
        text = f"{core.subject} {core.verb[2]} the {core.adjective} {core.obj} {core.place} {core.time}"
        return _sentence(text, mods)

    def paraphrase(self, text: str) -> str:
        words = text.split(" ")
        return " ".join(_SYNONYMS.get(w, w) if self.rng.random() < 0.7 else w for w in words)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _sentence(text: str, mods: Sequence[str] = (), end: str = ".") -> str:
    for mod in mods:
        text += mod if mod.startswith(",") else " " + mod
    return text[0].upper() + text[1:] + end


def _cola(gen: _TextGen) -> tuple[tuple[str, ...], str]:
    core = gen.core()
    verb = core.verb[0 if core.plural else 1]
    acceptable = gen.rng.random() < 0.7
    error = None if acceptable else gen.rng.randrange(3)
    if error == 0:  # agreement: the other present-tense form
        verb = core.verb[1 if core.plural else 0]
    obj = f"the the {core.obj}" if error == 1 else f"the {core.obj}"
    text = f"{core.subject} {obj} {verb}" if error == 2 else f"{core.subject} {verb} {obj}"
    return (_sentence(text, gen.modifiers(quotes=False)),), str(int(acceptable))


def _sst2(gen: _TextGen) -> tuple[tuple[str, ...], str]:
    rng = gen.rng
    positive = rng.random() < 0.55
    n_major = 1
    while rng.random() < 0.4:
        n_major += 1
    n_minor = rng.randint(0, n_major - 1)
    majority, minority = (_POSITIVE, _NEGATIVE) if positive else (_NEGATIVE, _POSITIVE)
    words = [rng.choice(majority) for _ in range(n_major)] + [rng.choice(minority) for _ in range(n_minor)]
    templates = ("the {f} is {w}", "{a} {f}", "{w} performances", "the plot feels {w}",
                 'the critics called it "{w}"', "{w} dialogue")
    segments = [rng.choice(templates).format(f=rng.choice(_FILM), w=w, a=_a(w)) for w in words]
    segments += [rng.choice(_FILLERS) for _ in range(gen.count(0.6))]
    rng.shuffle(segments)
    if rng.random() < 0.08:
        segments.insert(0, f'"{rng.choice(majority)}" is the word for this {rng.choice(_FILM)}')
    text = segments[0]
    for segment in segments[1:]:
        text += rng.choice((" , ", " and ", " , but ")) + segment
    return (text + " .",), str(int(positive))


def _mrpc(gen: _TextGen) -> tuple[tuple[str, ...], str]:
    core, mods = gen.core(), gen.modifiers()
    equivalent = gen.rng.random() < 0.6
    other = core if equivalent else gen.changed(core, gen.rng.sample(("subject", "verb", "obj"), gen.rng.randint(1, 2)))
    kept = [m for m in mods if gen.rng.random() < 0.7]
    return (gen.clause(core, mods), gen.paraphrase(gen.clause(other, kept))), str(int(equivalent))


def _question(gen: _TextGen, core: _Core) -> str:
    verb, adjective, obj = core.verb[0], core.adjective, core.obj
    template = gen.rng.choice(("how do I {v} {a} {o}", "what is the best way to {v} {a} {o}",
                               "where can I {v} {a} {o}", "why would anyone {v} {a} {o}",
                               "is it hard to {v} {a} {o}"))
    text = template.format(v=verb, a=_a(adjective), o=obj)
    return _sentence(text, gen.modifiers(0.6), "?")


def _qqp(gen: _TextGen) -> tuple[tuple[str, ...], str]:
    core = gen.core()
    duplicate = gen.rng.random() < 0.4
    other = core if duplicate else gen.changed(core, [gen.rng.choice(("verb", "obj"))])
    return (_question(gen, core), gen.paraphrase(_question(gen, other))), str(int(duplicate))


def _stsb(gen: _TextGen) -> tuple[tuple[str, ...], str]:
    core = gen.core()
    slots = ("subject", "verb", "adjective", "obj", "place")
    n_changed = gen.rng.randint(0, len(slots))
    other = gen.changed(core, gen.rng.sample(slots, n_changed))
    score = 5.0 * (len(slots) - n_changed) / len(slots) + gen.rng.gauss(0.0, 0.15)
    score = min(5.0, max(0.0, score))
    return (gen.clause(core, gen.modifiers()), gen.paraphrase(gen.clause(other))), f"{score:.3f}"


def _nli_hypothesis(gen: _TextGen, core: _Core, label: str) -> str:
    base, _, past, participle = core.verb
    subject, obj, rng = core.subject, core.obj, gen.rng
    if label == "entailment":
        options = (f"{subject} {past} the {obj}", f"{subject} {past} something {core.place}",
                   f"the {obj} was {participle} by {subject}")
    elif label == "contradiction":
        options = (f"{subject} did not {base} the {obj}", f"{subject} never {past} the {obj}",
                   f"nobody {past} the {obj}")
    else:
        extra = gen.changed(core, ["verb", "obj"])
        options = (f"{subject} {past} the {obj} because {rng.choice(_REASONS)}",
                   f"{subject} also {extra.verb[2]} the {extra.obj}",
                   f"{subject} {past} the {obj} for {rng.choice(_NAMES)}")
    return _sentence(rng.choice(options))


def _premise(gen: _TextGen, core: _Core, p_stop: float) -> str:
    text = gen.clause(core, gen.modifiers(p_stop))
    if gen.rng.random() < 0.05:
        text = f'"It is {gen.rng.choice(_ADJECTIVES)}," said {gen.rng.choice(_NAMES)}. ' + text
    return text


def _mnli(gen: _TextGen) -> tuple[tuple[str, ...], str]:
    core = gen.core()
    label = gen.rng.choice(("entailment", "neutral", "contradiction"))
    return (_premise(gen, core, 0.5), _nli_hypothesis(gen, core, label)), label


def _rte(gen: _TextGen) -> tuple[tuple[str, ...], str]:
    core = gen.core()
    label = gen.rng.choice(("entailment", "entailment", "neutral", "contradiction"))
    two_way = "entailment" if label == "entailment" else "not_entailment"
    return (_premise(gen, core, 0.35), _nli_hypothesis(gen, core, label)), two_way


def _qnli(gen: _TextGen) -> tuple[tuple[str, ...], str]:
    core = gen.core()
    base, _, past, _ = core.verb
    asked = gen.rng.randrange(4)
    question = (f"where did {core.subject} {base} the {core.obj}", f"when did {core.subject} {base} the {core.obj}",
                f"what did {core.subject} {base}", f"who {past} the {core.obj}")[asked]
    entailed = gen.rng.random() < 0.5
    given = ("subject", "verb") if asked == 2 else ("verb", "obj") if asked == 3 else ("subject", "verb", "obj")
    other = core if entailed else gen.changed(core, [gen.rng.choice(given)])
    return (_sentence(question, end="?"), gen.clause(other, gen.modifiers(0.4))), \
        "entailment" if entailed else "not_entailment"


def _binary_parse(text: str) -> str:
    tokens = text.replace(".", " .").replace("?", " ?").replace(",", " ,").split()
    return "( " * (len(tokens) - 1) + tokens[0] + " " + " ) ".join(tokens[1:]) + " )"


def _parse(text: str) -> str:
    tokens = text.replace(".", " .").replace("?", " ?").replace(",", " ,").split()
    return "(ROOT (S " + " ".join(f"(X {t})" for t in tokens) + "))"


_RowFn = Callable[[random.Random, int, tuple[str, ...], "str | None", str], list[str]]


@dataclass(frozen=True)
class _TaskWriter:
    example: Callable[[_TextGen], tuple[tuple[str, ...], str]]
    header: tuple[str, ...] | None  # None: the labelled files have no header (CoLA)
    test_header: tuple[str, ...]
    row: _RowFn  # (rng, index, texts, label or None for test, split file stem) -> fields


def _row_cola(rng: random.Random, i: int, texts: tuple[str, ...], label: str | None, _: str) -> list[str]:
    if label is None:
        return [str(i), texts[0]]
    return [rng.choice(_COLA_SOURCES), label, "" if label == "1" else "*", texts[0]]


def _row_single(rng: random.Random, i: int, texts: tuple[str, ...], label: str | None, _: str) -> list[str]:
    return [str(i), texts[0]] if label is None else [texts[0], label]


def _row_mrpc(rng: random.Random, i: int, texts: tuple[str, ...], label: str | None, _: str) -> list[str]:
    ids = [str(rng.randint(100000, 3999999)), str(rng.randint(100000, 3999999))]
    return [str(i) if label is None else label, *ids, *texts]


def _row_qqp(rng: random.Random, i: int, texts: tuple[str, ...], label: str | None, _: str) -> list[str]:
    if label is None:
        return [str(i), *texts]
    return [str(i), str(2 * i + 1), str(2 * i + 2), *texts, label]


def _row_stsb(rng: random.Random, i: int, texts: tuple[str, ...], label: str | None, _: str) -> list[str]:
    genre, filename, year = rng.choice(_STSB_SOURCES)
    fields = [str(i), genre, filename, year, f"{rng.randint(1, 9999):04d}", "none", "none", *texts]
    return fields if label is None else [*fields, label]


def _row_mnli(rng: random.Random, i: int, texts: tuple[str, ...], label: str | None, stem: str) -> list[str]:
    genres = _MNLI_GENRES["mismatched" if stem.endswith("mismatched") else "matched"]
    prompt_id = str(rng.randint(10000, 150000))
    fields = [str(i), prompt_id, prompt_id + "enc"[rng.randrange(3)], rng.choice(genres),
              _binary_parse(texts[0]), _binary_parse(texts[1]), _parse(texts[0]), _parse(texts[1]), *texts]
    if label is None:
        return fields
    if stem == "train":
        return [*fields, label, label]
    names = ("entailment", "neutral", "contradiction")
    # label1 is the author's label, as in MNLI; the gold label wins at least 3 of the 5 votes
    others = [label, label] + [rng.choice(names) for _ in range(2)]
    rng.shuffle(others)
    return [*fields, label, *others, label]


def _row_indexed(rng: random.Random, i: int, texts: tuple[str, ...], label: str | None, _: str) -> list[str]:
    return [str(i), *texts] if label is None else [str(i), *texts, label]


_MNLI_COLUMNS = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                 "sentence1_parse", "sentence2_parse", "sentence1", "sentence2")
_WRITERS: Mapping[str, _TaskWriter] = {
    "cola": _TaskWriter(_cola, None, ("index", "sentence"), _row_cola),
    "sst2": _TaskWriter(_sst2, ("sentence", "label"), ("index", "sentence"), _row_single),
    "mrpc": _TaskWriter(_mrpc, ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
                        ("index", "#1 ID", "#2 ID", "#1 String", "#2 String"), _row_mrpc),
    "qqp": _TaskWriter(_qqp, ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
                       ("id", "question1", "question2"), _row_qqp),
    "stsb": _TaskWriter(_stsb, ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                                "sentence1", "sentence2", "score"),
                        ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                         "sentence1", "sentence2"), _row_stsb),
    "mnli": _TaskWriter(_mnli, (*_MNLI_COLUMNS, "label1", "gold_label"), _MNLI_COLUMNS, _row_mnli),
    "qnli": _TaskWriter(_qnli, ("index", "question", "sentence", "label"), ("index", "question", "sentence"),
                        _row_indexed),
    "rte": _TaskWriter(_rte, ("index", "sentence1", "sentence2", "label"), ("index", "sentence1", "sentence2"),
                       _row_indexed),
}
_MNLI_DEV_HEADER = (*_MNLI_COLUMNS, "label1", "label2", "label3", "label4", "label5", "gold_label")


def _split_files(task: str) -> list[tuple[str, str]]:
    """(file stem, split kind) pairs; kind is 'train', 'dev' or 'test'."""
    if task == "mnli":
        return [("train", "train"), ("dev_matched", "dev"), ("dev_mismatched", "dev"),
                ("test_matched", "test"), ("test_mismatched", "test")]
    return [("train", "train"), ("dev", "dev"), ("test", "test")]


def write_glue_tsvs(
    root: str | Path,
    tasks: Iterable[str] = tuple(GLUE_TASKS),
    rows_per_split: int | Mapping[str, int] = 100,
    seed: int = 0,
) -> Path:
    """Write ``root/<Folder>/<split>.tsv`` for each task in the classic GLUE layout; returns ``root``.

    ``rows_per_split`` is one count for every file, or a mapping with keys ``train``, ``dev`` and
    ``test`` (MNLI writes that many rows to each of its matched and mismatched files). Each file's
    content depends only on (seed, task, file), so adding a task leaves the others unchanged.
    """
    counts = dict.fromkeys(("train", "dev", "test"), rows_per_split) if isinstance(rows_per_split, int) \
        else dict(rows_per_split)
    if set(counts) != {"train", "dev", "test"} or any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"rows_per_split must be a non-negative int or a mapping with int keys "
                         f"'train', 'dev', 'test'; got {rows_per_split!r}")
    root = Path(root)
    for task in dict.fromkeys(get_glue_task(t).name for t in tasks):
        writer = _WRITERS[task]
        folder = root / GLUE_TASKS[task].folder
        folder.mkdir(parents=True, exist_ok=True)
        for stem, kind in _split_files(task):
            rng = random.Random(f"moonlit-glue/{seed}/{task}/{stem}")
            gen = _TextGen(rng)
            header = writer.test_header if kind == "test" else \
                _MNLI_DEV_HEADER if task == "mnli" and kind == "dev" else writer.header
            with open(folder / f"{stem}.tsv", "w", encoding="utf-8", newline="") as f:
                # quotechar=None with QUOTE_NONE: quotes are written as plain characters, and a tab
                # or newline inside a field raises instead of silently shifting columns.
                out = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, lineterminator="\n")
                if header is not None:
                    out.writerow(header)
                for i in range(counts[kind]):
                    texts, label = writer.example(gen)
                    out.writerow(writer.row(rng, i, texts, None if kind == "test" else label, stem))
    return root


def synthetic_sentences(count: int, seed: int = 0) -> list[str]:
    """Text from every task's generator, e.g. to train a tokenizer that covers the GLUE fixtures."""
    rng = random.Random(f"moonlit-corpus/{seed}")
    gen = _TextGen(rng)
    examples = [_WRITERS[task].example for task in GLUE_TASKS]
    sentences: list[str] = []
    while len(sentences) < count:
        sentences.extend(examples[len(sentences) % len(examples)](gen)[0])
    return sentences[:count]
