"""On-disk fixtures that stand in for data and weights that cannot be downloaded here.

* ``write_image_folder``: an ImageNet-style folder (``root/{train,val}/<class>/*.jpg``) whose
  class is the (shape, colour) of one object drawn on a noisy background.
* ``write_glue_tsvs`` (from ``synthetic_glue``): the eight GLUE tasks in the classic layout.
* ``train_wordpiece_tokenizer`` / ``train_bpe_tokenizer``: BERT- and RoBERTa-style tokenizers
  trained with the ``tokenizers`` library, saved for ``AutoTokenizer.from_pretrained(dir)``.
* ``write_tiny_bert`` / ``write_tiny_roberta``: randomly initialised sequence classifiers saved
  with their tokenizer, for ``AutoModelForSequenceClassification.from_pretrained(dir)``.

Everything is deterministic given ``seed``; the real loaders read these files unchanged.
Run ``python -m moonlit.common.data.synthetic out_dir=OUT_DIR`` to write a full set
(config ``configs/common/synthetic.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from ..config import hydra_app
from ..errors import InputError
from .synthetic_glue import synthetic_sentences, write_glue_tsvs

__all__ = ["IMAGE_COLOURS", "IMAGE_SHAPES", "image_class_names", "write_image_folder", "write_glue_tsvs",
           "synthetic_sentences", "train_wordpiece_tokenizer", "train_bpe_tokenizer", "write_tiny_bert",
           "write_tiny_roberta", "write_fixtures", "run"]

IMAGE_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
IMAGE_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
                 "magenta": (200, 50, 200), "cyan": (40, 200, 210), "orange": (240, 130, 20)}
# 6 shapes and 7 colours are coprime, so class k -> (shape k mod 6, colour k mod 7) gives 42
# distinct classes, and any first few classes differ in both shape and colour.
MAX_IMAGE_CLASSES = len(IMAGE_SHAPES) * len(IMAGE_COLOURS)
_CORPUS_SENTENCES = 4000


def image_class_names(num_classes: int) -> list[str]:
    """Folder names ``"<k>_<colour>_<shape>"`` in ImageFolder's (sorted) class order."""
    if not 1 <= num_classes <= MAX_IMAGE_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_IMAGE_CLASSES} (shape x colour pairs), got {num_classes}")
    colours = list(IMAGE_COLOURS)
    return [f"{k:02d}_{colours[k % len(colours)]}_{IMAGE_SHAPES[k % len(IMAGE_SHAPES)]}" for k in range(num_classes)]


def _draw_image(rng: np.random.Generator, shape: str, colour: tuple[int, int, int], size: int) -> Image.Image:
    background = rng.uniform(70, 180) + rng.uniform(-15, 15, 3) + rng.normal(0, 18, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(c) for c in np.clip(np.array(colour) + rng.integers(-25, 26, 3), 0, 255))
    cx, cy = size / 2 + rng.uniform(-0.15, 0.15, 2) * size
    r = rng.uniform(0.22, 0.32) * size
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - 0.87 * r, cy + 0.5 * r), (cx + 0.87 * r, cy + 0.5 * r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "cross":
        draw.rectangle((cx - r, cy - 0.25 * r, cx + r, cy + 0.25 * r), fill=fill)
        draw.rectangle((cx - 0.25 * r, cy - r, cx + 0.25 * r, cy + r), fill=fill)
    else:  # ring
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, round(0.35 * r)))
    return image


def write_image_folder(
    root: str | Path,
    num_classes: int = 4,
    images_per_class: int | Mapping[str, int] = 10,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``; returns ``root``.

    ``images_per_class`` is one count for both splits or ``{"train": n, "val": m}``. Class k is
    a filled ``IMAGE_SHAPES[k % 6]`` in ``IMAGE_COLOURS``' k-th colour (mod 7), with jittered
    colour, position and size, on a tinted Gaussian-noise background.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 pixels to draw a recognisable shape, got {image_size}")
    counts = dict.fromkeys(("train", "val"), images_per_class) if isinstance(images_per_class, int) \
        else dict(images_per_class)
    if set(counts) != {"train", "val"} or any(not isinstance(n, int) or n < 1 for n in counts.values()):
        raise ValueError(f"images_per_class must be an int >= 1 or a mapping with int >= 1 values for "
                         f"'train' and 'val'; got {images_per_class!r}")
    root = Path(root)
    for split_id, (split, count) in enumerate(counts.items()):
        for k, name in enumerate(image_class_names(num_classes)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = IMAGE_COLOURS[name.split("_")[1]]
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, k, i])
                image = _draw_image(rng, IMAGE_SHAPES[k % len(IMAGE_SHAPES)], colour, image_size)
                image.save(folder / f"{split}_{k:02d}_{i:05d}.jpg", quality=90)
    return root


def _texts(texts: Iterable[str] | None, seed: int) -> list[str]:
    return list(texts) if texts is not None else synthetic_sentences(_CORPUS_SENTENCES, seed)


def train_wordpiece_tokenizer(
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    vocab_size: int = 2000,
    model_max_length: int = 512,
    seed: int = 0,
) -> Path:
    """Train a lower-casing BERT WordPiece tokenizer (default: on the synthetic GLUE text) and save it."""
    from tokenizers import Tokenizer, models, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(_BERT_SPECIAL), show_progress=False)
    _bert_pipeline(tokenizer)
    tokenizer.train_from_iterator(_texts(texts, seed), trainer)
    return _save_bert_tokenizer(tokenizer, out_dir, model_max_length)


def wordpiece_tokenizer_from_words(out_dir: str | Path, words: Iterable[str], model_max_length: int = 512) -> Path:
    """A BERT tokenizer whose vocabulary is exactly ``words`` (after the special tokens): deterministic ids."""
    from tokenizers import Tokenizer, models

    vocab = {token: index for index, token in enumerate(dict.fromkeys([*_BERT_SPECIAL, *words]))}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    _bert_pipeline(tokenizer)
    return _save_bert_tokenizer(tokenizer, out_dir, model_max_length)


_BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _bert_pipeline(tokenizer: Any) -> None:
    from tokenizers import decoders, normalizers, pre_tokenizers

    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()


def _save_bert_tokenizer(tokenizer: Any, out_dir: str | Path, model_max_length: int) -> Path:
    from tokenizers import processors
    from transformers import BertTokenizerFast

    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    wrapped = BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=True, model_max_length=model_max_length,
                                unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                                mask_token="[MASK]")
    wrapped.save_pretrained(str(out_dir))
    return Path(out_dir)


def train_bpe_tokenizer(
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    vocab_size: int = 2000,
    model_max_length: int = 512,
    seed: int = 0,
) -> Path:
    """Train a RoBERTa byte-level BPE tokenizer (default: on the synthetic GLUE text) and save it."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaTokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4 order
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_texts(texts, seed), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=special, show_progress=False)
    tokenizer = bpe._tokenizer  # the underlying tokenizers.Tokenizer; the wrapper has no public accessor
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", tokenizer.token_to_id("</s>")),
                                                            ("<s>", tokenizer.token_to_id("<s>")))
    wrapped = RobertaTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length,
                                   bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                   unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    wrapped.save_pretrained(str(out_dir))
    return Path(out_dir)


def _write_tiny_classifier(kind: str, out_dir: str | Path, num_labels: int, hidden_size: int, num_layers: int,
                           num_heads: int, intermediate_size: int, tokenizer_dir: str | Path | None,
                           seed: int) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        train = train_wordpiece_tokenizer if kind == "bert" else train_bpe_tokenizer
        train(out_dir, seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tokenizer.save_pretrained(str(out_dir))
    sizes = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=num_heads, intermediate_size=intermediate_size, num_labels=num_labels,
                 pad_token_id=tokenizer.pad_token_id)
    if kind == "bert":
        config, model_class = BertConfig(max_position_embeddings=512, **sizes), BertForSequenceClassification
    else:
        # RoBERTa's positions start after padding_idx (= pad id 1), hence 512 + 2 embeddings
        config = RobertaConfig(max_position_embeddings=514, type_vocab_size=1, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, **sizes)
        model_class = RobertaForSequenceClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.save_pretrained(str(out_dir))
    return out_dir


def write_tiny_bert(
    out_dir: str | Path,
    num_labels: int = 2,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 128,
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Save a random ``BertForSequenceClassification`` and its WordPiece tokenizer in ``out_dir``.

    ``tokenizer_dir`` reuses a saved tokenizer; by default one is trained on the synthetic text.
    """
    return _write_tiny_classifier("bert", out_dir, num_labels, hidden_size, num_layers, num_heads,
                                  intermediate_size, tokenizer_dir, seed)


def write_tiny_roberta(
    out_dir: str | Path,
    num_labels: int = 2,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 128,
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Save a random ``RobertaForSequenceClassification`` and its byte-level BPE tokenizer in ``out_dir``."""
    return _write_tiny_classifier("roberta", out_dir, num_labels, hidden_size, num_layers, num_heads,
                                  intermediate_size, tokenizer_dir, seed)


def write_fixtures(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """A quickstart-sized set: ``imagenet/``, ``glue/``, ``bert-tiny/``, ``roberta-tiny/`` under ``root``."""
    root = Path(root)
    return {
        "imagenet": write_image_folder(root / "imagenet", num_classes=10,
                                       images_per_class={"train": 40, "val": 10}, image_size=64, seed=seed),
        "glue": write_glue_tsvs(root / "glue", rows_per_split={"train": 800, "dev": 200, "test": 100}, seed=seed),
        "bert-tiny": write_tiny_bert(root / "bert-tiny", seed=seed),
        "roberta-tiny": write_tiny_roberta(root / "roberta-tiny", seed=seed),
    }


def run(cfg: DictConfig) -> dict[str, Path]:
    """The work behind ``python -m moonlit.common.data.synthetic``: :func:`write_fixtures` into ``cfg.out_dir``."""
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise InputError(f"seed must be an integer, got {cfg.seed!r}")
    return write_fixtures(str(cfg.out_dir), int(cfg.seed))


@hydra_app("common", "synthetic")
def main(cfg: DictConfig) -> None:
    for name, path in run(cfg).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
