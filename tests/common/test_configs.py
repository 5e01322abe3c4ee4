"""Every config file in the repo composes, instantiates, and names the command that uses it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from moonlit.common.config import compose_config, config_root

ROOT = config_root()
COMMAND = re.compile(r"^#\s+(python -m moonlit\.|torchrun .*-m moonlit\.|bash scripts/)")


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def _is_primary(path: Path) -> bool:
    searchpath = (_load(path).get("hydra") or {}).get("searchpath") or []
    return "pkg://moonlit.configs" in searchpath


ALL_FILES = sorted(ROOT.rglob("*.yaml"))
PRIMARIES = [p for p in ALL_FILES if _is_primary(p)]
OPTIONS = [p for p in ALL_FILES if not _is_primary(p)]


def _defaults_groups(primary: Path) -> set[str]:
    groups = set()
    for entry in _load(primary).get("defaults", []):
        if isinstance(entry, dict):
            groups.update(key.split("@")[0].lstrip("/").removeprefix("override ").strip() for key in entry)
    return groups


def _compose_target(option: Path) -> tuple[Path, str]:
    """A primary config that uses the option's group, and the override that selects the option."""
    rel = option.relative_to(ROOT)
    for primary in PRIMARIES:
        tree = primary.parent
        if tree == ROOT:
            continue
        if option.is_relative_to(tree):  # a group of this tree, e.g. top/model/bert.yaml
            group = option.parent.relative_to(tree).as_posix()
        elif len(rel.parts) >= 2 and not (ROOT / rel.parts[0] / "__init__.py").exists():
            group = option.parent.relative_to(ROOT).as_posix()  # a shared group, e.g. trainer/ddp.yaml
        else:
            continue
        if group in _defaults_groups(primary):
            return primary, f"{group}={option.stem}"
    raise AssertionError(f"{rel}: no primary config lists its group in its defaults; it can never be used")


def _instantiate_all(node: object) -> None:
    """Instantiate every node that has a ``_target_`` (partials stay partial)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            instantiate(node)
            return
        for key in node:
            _instantiate_all(node[key])
    elif isinstance(node, ListConfig):
        for item in node:
            _instantiate_all(item)


def _compose(primary: Path, overrides: list[str]) -> DictConfig:
    tree = primary.parent.relative_to(ROOT).as_posix()
    cfg = compose_config(tree, primary.stem, overrides)
    OmegaConf.resolve(cfg)  # every interpolation must resolve
    return cfg


def test_found_configs() -> None:
    assert PRIMARIES, f"no primary configs under {ROOT}"
    shared = {p.parent.name for p in OPTIONS if p.parent.parent == ROOT}
    assert {"trainer", "logger", "paths"} <= shared


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_header_names_the_command(path: Path) -> None:
    header = [line for line in path.read_text().splitlines()[:6] if line.startswith("#")]
    assert any(COMMAND.match(line) for line in header), (
        f"{path.relative_to(ROOT)}: the header comment must give the exact command that uses it"
    )


@pytest.mark.parametrize("path", PRIMARIES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_primary_composes_and_instantiates(path: Path) -> None:
    cfg = _compose(path, [])
    _instantiate_all(cfg)


@pytest.mark.parametrize("path", OPTIONS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_group_option_composes_and_instantiates(path: Path) -> None:
    primary, override = _compose_target(path)
    cfg = _compose(primary, [override])
    _instantiate_all(cfg)


def test_unknown_key_is_an_error() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_config("common", "quickstart", ["latency.no_such_key=1"])


def test_unknown_tree_names_known_ones() -> None:
    with pytest.raises(FileNotFoundError, match="common"):
        compose_config("no_such_paper", "train")


def test_compose_config_inside_a_running_hydra_app_restores_its_state() -> None:
    """A quickstart app composes another app's config (ElasticViT quickstart -> search) and goes on."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from moonlit.common.config import HYDRA_VERSION_BASE, compose_config, config_dir

    with initialize_config_dir(config_dir=str(config_dir("elasticvit")), version_base=HYDRA_VERSION_BASE):
        running = GlobalHydra.instance().hydra
        assert compose_config("litepred", "litepred", ["platform=debug"]).platform == "debug"
        assert GlobalHydra.instance().hydra is running
        assert compose("search", overrides=["fitness=proxy"]).fitness == "proxy"  # the app's own tree still composes
