"""Import graph between the moonlit packages: arrows point only down.

``common`` ← ``litepred`` ← {``spaceevo``, ``elasticvit``}, and ``top`` beside them on ``common`` alone.
Each package's folder and its ``tests/<package>`` folder obey the same rule;
the files at the root of ``tests/`` belong to no package and may import anything. Every ``import`` and
``from … import`` counts, in function bodies and under ``if TYPE_CHECKING:`` too, relative ones resolved.
The folders come from ``pyproject.toml``'s ``[tool.setuptools] package-dir``.

A second rule: the papers above LitePred use it only through its public API, ``moonlit.litepred`` and
``moonlit.litepred.api``; their tests may also import ``moonlit.litepred.testing``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "moonlit"

# The packages each package (and its tests/<package> folder) may import.
ALLOWED: dict[str, frozenset[str]] = {
    "common": frozenset({"common"}),
    "litepred": frozenset({"common", "litepred"}),
    "spaceevo": frozenset({"common", "litepred", "spaceevo"}),
    "elasticvit": frozenset({"common", "litepred", "elasticvit"}),
    "top": frozenset({"common", "top"}),
}
# Packages of package-dir that hold no code under the rule (Hydra YAML found by package name); importing them
# is not allowed either, since no set above names them.
DATA_PACKAGES = frozenset({"configs"})

# (file, imported module) pairs that break the rule today. The list may only shrink: a pair that no longer
# occurs fails the test until it is removed here.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()

# The papers on LitePred use only its public API: code imports these modules of it, tests/<paper> also the testing one.
LITEPRED = "litepred"
LITEPRED_API = frozenset({f"{NAMESPACE}.litepred", f"{NAMESPACE}.litepred.api"})
LITEPRED_TESTING = f"{NAMESPACE}.litepred.testing"
# (file, LitePred module) pairs of paper files that import a LitePred internal today; may only shrink.
KNOWN_INTERNAL_IMPORTS: frozenset[tuple[str, str]] = frozenset()


class Edge(NamedTuple):
    """One imported module of one import statement."""

    path: str  # posix path relative to the walked root
    line: int
    owner: str  # the package whose rule the file obeys
    module: str  # absolute module name
    target: str  # the package the module belongs to


def package_folders(root: Path) -> dict[str, Path]:
    """``{package: folder}`` of the ``moonlit.<package>`` entries of ``[tool.setuptools] package-dir``."""
    with open(root / "pyproject.toml", "rb") as f:
        package_dir = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    prefix = NAMESPACE + "."
    return {name.removeprefix(prefix): root / folder for name, folder in package_dir.items()
            if name.startswith(prefix)}


def imported_modules(tree: ast.Module, module: str, is_package: bool, path: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``tree``, a file of dotted name ``module``.

    ``from X import a, b`` gives ``X``; where ``X`` is the namespace itself or the import is ``from . import a``,
    it gives ``X.a`` and ``X.b`` (the names are then the modules)."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = from_base(node, package, path)
            if node.module is None or base == NAMESPACE:
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return sorted(found)


def from_base(node: ast.ImportFrom, package: str, path: str) -> str:
    """The absolute module ``X`` of ``from X import …`` in a file of package ``package``."""
    base = node.module or ""
    if node.level:
        parts = package.split(".") if package else []
        if node.level - 1 >= len(parts):
            raise ValueError(f"{path}:{node.lineno}: relative import of level {node.level} leaves "
                             f"package {package!r}; expected at most {len(parts)} levels")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
    return base


def collect_edges(root: Path, folders: Mapping[str, Path], owners: Iterable[str]) -> list[Edge]:
    """Every import of a ``moonlit.<package>`` module in the folders of ``owners`` and their ``tests/<owner>``."""
    edges = []
    for owner in sorted(owners):
        for folder, dotted in ((folders[owner], f"{NAMESPACE}.{owner}"), (root / "tests" / owner, f"tests.{owner}")):
            for file in sorted(folder.rglob("*.py")):
                rel = file.relative_to(folder).with_suffix("").parts
                is_package = rel[-1] == "__init__"
                module = ".".join((dotted,) + (rel[:-1] if is_package else rel))
                path = file.relative_to(root).as_posix()
                tree = ast.parse(file.read_text(encoding="utf-8"), filename=path)
                for line, imported in imported_modules(tree, module, is_package, path):
                    parts = imported.split(".")
                    if parts[0] == NAMESPACE and len(parts) > 1:
                        edges.append(Edge(path, line, owner, imported, parts[1]))
    return edges


def problems(edges: Iterable[Edge], allowed: Mapping[str, frozenset[str]],
             known: frozenset[tuple[str, str]]) -> list[str]:
    """A line per import that breaks the rule and is not in ``known``; a line per pair of ``known`` not found."""
    lines, seen = [], set()
    for edge in edges:
        if edge.target in allowed[edge.owner]:
            continue
        seen.add((edge.path, edge.module))
        if (edge.path, edge.module) not in known:
            lines.append(f"{edge.path}:{edge.line} imports {edge.module}: {edge.owner} may import only "
                         f"{', '.join(sorted(allowed[edge.owner]))}, not {edge.target}")
    lines += [f"{path} no longer imports {module}: remove the pair from KNOWN_VIOLATIONS" for path, module in
              sorted(known - seen)]
    return lines


def litepred_imports(root: Path, folders: Mapping[str, Path], owners: Iterable[str]) -> list[Edge]:
    """Every import of a LitePred module in the folders of ``owners`` and their ``tests/<owner>``.

    ``from moonlit.litepred import x`` counts as an import of ``moonlit.litepred.x`` when ``x`` is a module
    of LitePred's folder (else it is a name of ``moonlit.litepred`` itself)."""
    package_name = f"{NAMESPACE}.{LITEPRED}"
    folder = folders[LITEPRED]
    submodules = {p.stem for p in folder.glob("*.py")}
    submodules |= {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
    edges = []
    for owner in sorted(owners):
        for top, dotted in ((folders[owner], f"{NAMESPACE}.{owner}"), (root / "tests" / owner, f"tests.{owner}")):
            for file in sorted(top.rglob("*.py")):
                rel = file.relative_to(top).with_suffix("").parts
                is_package = rel[-1] == "__init__"
                module = ".".join((dotted,) + (rel[:-1] if is_package else rel))
                package = module if is_package else module.rpartition(".")[0]
                path = file.relative_to(root).as_posix()
                for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), filename=path)):
                    found: list[str] = []
                    if isinstance(node, ast.Import):
                        found = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        base = from_base(node, package, path)
                        if base == NAMESPACE:
                            found = [f"{base}.{alias.name}" for alias in node.names]
                        elif base == package_name:
                            found = [f"{base}.{alias.name}" if alias.name in submodules else base
                                     for alias in node.names]
                        else:
                            found = [base]
                    edges += [Edge(path, node.lineno, owner, name, LITEPRED) for name in found
                              if name == package_name or name.startswith(package_name + ".")]
    return edges


def api_problems(edges: Iterable[Edge], known: frozenset[tuple[str, str]]) -> list[str]:
    """A line per LitePred import outside the API that ``known`` does not list; a line per stale pair of ``known``."""
    lines, seen = [], set()
    for edge in edges:
        allowed = LITEPRED_API | ({LITEPRED_TESTING} if edge.path.startswith("tests/") else set())
        if edge.module in allowed:
            continue
        seen.add((edge.path, edge.module))
        if (edge.path, edge.module) not in known:
            lines.append(f"{edge.path}:{edge.line} imports {edge.module}: {edge.owner} may use LitePred only through "
                         f"{', '.join(sorted(allowed))}")
    lines += [f"{path} no longer imports {module}: remove the pair from KNOWN_INTERNAL_IMPORTS" for path, module in
              sorted(known - seen)]
    return lines


def test_papers_use_litepred_only_through_its_api() -> None:
    folders = package_folders(REPO)
    papers = [owner for owner, allowed in ALLOWED.items() if LITEPRED in allowed and owner != LITEPRED]
    assert sorted(papers) == ["elasticvit", "spaceevo"]
    edges = litepred_imports(REPO, folders, papers)
    assert {e.path.split("/")[0] for e in edges} >= {"SpaceEvo", "ElasticViT", "tests"}  # the walk found the users
    report = api_problems(edges, KNOWN_INTERNAL_IMPORTS)
    assert not report, "papers use LitePred through moonlit.litepred(.api), tests also .testing:\n" + "\n".join(report)


def test_api_rule_sees_every_way_to_reach_an_internal(tmp_path: Path) -> None:
    files = {
        "pyproject.toml": ('[tool.setuptools]\npackage-dir = { "moonlit.litepred" = "Lite", '
                           '"moonlit.paper" = "Paper" }\n'),
        "Lite/__init__.py": "", "Lite/api.py": "", "Lite/nas.py": "", "Lite/testing.py": "",
        "Lite/profile/__init__.py": "",
        "Paper/__init__.py": "",
        "Paper/ok.py": "from moonlit.litepred.api import Predictor\nfrom moonlit.litepred import Predictor, api\n",
        "Paper/bad.py": ("import moonlit.litepred.nas\nfrom moonlit.litepred import nas, profile\n"
                         "from moonlit import litepred\nfrom moonlit.litepred.testing import x\n"),
        "tests/paper/test_ok.py": "from moonlit.litepred import testing\nfrom moonlit.litepred.testing import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    folders = package_folders(tmp_path)
    edges = litepred_imports(tmp_path, folders, ["paper"])
    assert api_problems(edges, frozenset({("Paper/gone.py", "moonlit.litepred.nas")})) == [
        "Paper/bad.py:1 imports moonlit.litepred.nas: paper may use LitePred only through moonlit.litepred, "
        "moonlit.litepred.api",
        "Paper/bad.py:2 imports moonlit.litepred.nas: paper may use LitePred only through moonlit.litepred, "
        "moonlit.litepred.api",
        "Paper/bad.py:2 imports moonlit.litepred.profile: paper may use LitePred only through moonlit.litepred, "
        "moonlit.litepred.api",
        "Paper/bad.py:4 imports moonlit.litepred.testing: paper may use LitePred only through moonlit.litepred, "
        "moonlit.litepred.api",
        "Paper/gone.py no longer imports moonlit.litepred.nas: remove the pair from KNOWN_INTERNAL_IMPORTS",
    ]
    assert len([e for e in edges if e.path == "Paper/ok.py"]) == 3  # api, then the package twice


def test_imports_point_down() -> None:
    folders = package_folders(REPO)
    assert set(folders) == set(ALLOWED) | DATA_PACKAGES, (
        f"pyproject.toml package-dir has packages {sorted(folders)}; expected exactly {sorted(ALLOWED)} with a rule "
        f"in ALLOWED plus the data packages {sorted(DATA_PACKAGES)}")
    edges = collect_edges(REPO, folders, ALLOWED)
    # the walk reached every package folder and every tests/<package> folder
    assert {e.path.split("/")[0] for e in edges} >= {folders[p].name for p in ALLOWED}
    assert {e.path.split("/")[1] for e in edges if e.path.startswith("tests/")} == set(ALLOWED)
    report = problems(edges, ALLOWED, KNOWN_VIOLATIONS)
    rule = "common <- litepred <- {spaceevo, elasticvit}; top -> common"
    assert not report, f"import rule ({rule}):\n" + "\n".join(report)


def test_walker_finds_every_kind_of_import(tmp_path: Path) -> None:
    files = {
        "pyproject.toml": '[tool.setuptools]\npackage-dir = { "moonlit.alpha" = "Alpha", "moonlit.beta" = "Beta", '
                          '"other.gamma" = "Gamma" }\n',
        "Alpha/__init__.py": "from .core import run\n",
        "Alpha/core.py": ("from typing import TYPE_CHECKING\nimport numpy\n\nif TYPE_CHECKING:\n"
                          "    from moonlit.beta.types import Thing\n\n\ndef run():\n"
                          "    import moonlit.beta.engine as engine\n    return engine\n"),
        "Beta/__init__.py": "",
        "Beta/sub/__init__.py": "from . import leaf\n",
        "Beta/sub/leaf.py": "from ..engine import start\nfrom ... import alpha\nimport moonlit\n",
        "tests/alpha/test_core.py": ("from moonlit.alpha import core\n\n\nclass TestCore:\n"
                                     "    def test_it(self):\n        from moonlit import beta, alpha\n"),
        "tests/test_root.py": "from moonlit.beta import engine\n",  # the tests root is not walked
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    folders = package_folders(tmp_path)
    assert folders == {"alpha": tmp_path / "Alpha", "beta": tmp_path / "Beta"}
    edges = collect_edges(tmp_path, folders, ["alpha", "beta"])
    assert set(edges) == {
        Edge("Alpha/__init__.py", 1, "alpha", "moonlit.alpha.core", "alpha"),
        Edge("Alpha/core.py", 5, "alpha", "moonlit.beta.types", "beta"),
        Edge("Alpha/core.py", 9, "alpha", "moonlit.beta.engine", "beta"),
        Edge("Beta/sub/__init__.py", 1, "beta", "moonlit.beta.sub.leaf", "beta"),
        Edge("Beta/sub/leaf.py", 1, "beta", "moonlit.beta.engine", "beta"),
        Edge("Beta/sub/leaf.py", 2, "beta", "moonlit.alpha", "alpha"),
        Edge("tests/alpha/test_core.py", 1, "alpha", "moonlit.alpha", "alpha"),
        Edge("tests/alpha/test_core.py", 6, "alpha", "moonlit.beta", "beta"),
        Edge("tests/alpha/test_core.py", 6, "alpha", "moonlit.alpha", "alpha"),
    }
    assert len(edges) == 9

    allowed = {"alpha": frozenset({"alpha"}), "beta": frozenset({"alpha", "beta"})}
    known = frozenset({("Alpha/core.py", "moonlit.beta.types"), ("Beta/gone.py", "moonlit.gamma")})
    assert problems(edges, allowed, known) == [
        "Alpha/core.py:9 imports moonlit.beta.engine: alpha may import only alpha, not beta",
        "tests/alpha/test_core.py:6 imports moonlit.beta: alpha may import only alpha, not beta",
        "Beta/gone.py no longer imports moonlit.gamma: remove the pair from KNOWN_VIOLATIONS",
    ]
    full = frozenset({("Alpha/core.py", "moonlit.beta.types"), ("Alpha/core.py", "moonlit.beta.engine"),
                      ("tests/alpha/test_core.py", "moonlit.beta")})
    assert problems(edges, allowed, full) == []

    (tmp_path / "Beta/sub/leaf.py").write_text("from .... import alpha\n")
    with pytest.raises(ValueError) as error:
        collect_edges(tmp_path, folders, ["beta"])
    assert str(error.value) == ("Beta/sub/leaf.py:1: relative import of level 4 leaves package 'moonlit.beta.sub'; "
                                "expected at most 3 levels")
