"""Every entry point has one shape: ``@hydra_app("<tree>", "<config>") def main(cfg)`` whose body calls an
importable ``run(cfg)``, so tests (and other apps) call ``run`` with a composed config.

Entry points are the modules with an ``if __name__ == "__main__":`` block, and ``__main__.py`` files, in the
package folders of ``pyproject.toml``'s ``[tool.setuptools] package-dir``. The check reads the source (AST);
nothing is imported.

A subcommand dispatcher (``moonlit-litepred <command> overrides...``) has the shape when it holds a module-level
dict literal ``COMMANDS = {"<command>": "<module>", ...}`` whose every module lies in the package folders and has
the app shape, and a ``main`` that reads ``COMMANDS``. A module whose whole body is ``from <module> import main``
and a call of ``main()`` (a package's ``__main__.py``) has the shape of the dispatcher it imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO = Path(__file__).resolve().parents[1]
DATA_PACKAGES = frozenset({"moonlit.configs"})  # Hydra YAML, no code

# Entry points that do not have the shape yet, each with the reason. A folder entry ("Paper/") covers every
# file below it. The list may only shrink: an entry that has the shape, or names no entry point, fails
# test_allowlist_is_current until it is removed here.
ALLOWLIST: dict[str, str] = {}


def package_dir(root: Path = REPO) -> dict[str, str]:
    """``{import name: folder}`` of the code packages in ``[tool.setuptools] package-dir`` (data packages left out)."""
    with open(root / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: folder for name, folder in mapping.items() if name not in DATA_PACKAGES}


def package_folders(root: Path = REPO) -> list[Path]:
    """The code folders of ``[tool.setuptools] package-dir`` (data packages left out)."""
    return sorted(root / folder for folder in package_dir(root).values())


def module_file(module: str, root: Path = REPO) -> Path | None:
    """The source file of a dotted module name in the package folders (``moonlit.litepred.cli`` →
    ``LitePred/cli.py``), None when there is none."""
    for name, folder in sorted(package_dir(root).items(), key=lambda item: -len(item[0])):
        if module != name and not module.startswith(name + "."):
            continue
        rest = module[len(name):].split(".")[1:]
        base = root / folder / Path(*rest) if rest else root / folder
        candidates = [base.with_name(base.name + ".py"), base / "__init__.py"] if rest else [base / "__init__.py"]
        return next((candidate for candidate in candidates if candidate.is_file()), None)
    return None


def module_name(path: Path, root: Path = REPO) -> str | None:
    """The dotted name of a source file in the package folders (``LitePred/apps/build.py`` →
    ``moonlit.litepred.apps.build``; a package's ``__init__.py`` → the package)."""
    for name, folder in package_dir(root).items():
        base = root / folder
        if path.is_relative_to(base):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts and parts[-1] == "__init__":
                parts.pop()
            return ".".join([name, *parts])
    return None


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.comparators) != 1:
        return False
    operands = [node.test.left, node.test.comparators[0]]
    return (isinstance(node.test.ops[0], ast.Eq)
            and any(isinstance(o, ast.Name) and o.id == "__name__" for o in operands)
            and any(isinstance(o, ast.Constant) and o.value == "__main__" for o in operands))


def is_entry_point(path: Path, tree: ast.Module) -> bool:
    return path.name == "__main__.py" or any(_is_main_guard(node) for node in tree.body)


def _is_hydra_app(decorator: ast.expr) -> bool:
    """``@hydra_app(...)`` or ``@<module>.hydra_app(...)``."""
    if not isinstance(decorator, ast.Call):
        return False
    func = decorator.func
    return (isinstance(func, ast.Name) and func.id == "hydra_app") or \
        (isinstance(func, ast.Attribute) and func.attr == "hydra_app")


def shape_problems(tree: ast.Module) -> list[str]:
    """What keeps a module's source from the app shape; empty when it has it."""
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    problems = []
    if "run" not in functions:
        problems.append("no module-level def run(cfg)")
    main = functions.get("main")
    if main is None:
        problems.append("no module-level def main(cfg)")
    else:
        if not any(_is_hydra_app(d) for d in main.decorator_list):
            problems.append("main is not decorated with @hydra_app(<tree>, <config>)")
        if not any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "run"
                   for n in ast.walk(main)):
            problems.append("main does not call run(cfg)")
    return problems


def _commands(tree: ast.Module) -> ast.expr | None:
    """The value assigned to a module-level ``COMMANDS`` (plain or annotated), None when there is none."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in node.targets):
            return node.value
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "COMMANDS":
            return node.value
    return None


def dispatcher_problems(tree: ast.Module, root: Path = REPO) -> list[str]:
    """What keeps a dispatcher (a module with ``COMMANDS``) from the shape; empty when it has it."""
    commands = _commands(tree)
    if not isinstance(commands, ast.Dict) or not commands.keys:
        return ["COMMANDS is not a non-empty dict literal {\"<command>\": \"<module>\"}"]
    problems = []
    for key, value in zip(commands.keys, commands.values):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)
                and isinstance(value, ast.Constant) and isinstance(value.value, str)):
            problems.append(f"COMMANDS entry at line {value.lineno} is not two string literals "
                            "\"<command>\": \"<module>\"")
            continue
        path = module_file(value.value, root)
        if path is None:
            problems.append(f"command {key.value!r}: module {value.value} is not in the package folders")
            continue
        inner = shape_problems(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        if inner:
            problems.append(f"command {key.value!r}: {value.value}: {', '.join(inner)}")
    main = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"), None)
    if main is None:
        problems.append("no module-level def main(argv)")
    elif not any(isinstance(n, ast.Name) and n.id == "COMMANDS" for n in ast.walk(main)):
        problems.append("main does not read COMMANDS")
    return problems


def _is_main_call(node: ast.stmt) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "main" and not node.value.args and not node.value.keywords)


def delegated_module(path: Path, tree: ast.Module, root: Path = REPO) -> str | None:
    """The module a thin delegate imports ``main`` from, when the whole body (docstring aside) is
    ``from <module> import main`` and ``main()``, bare or under the ``__main__`` guard; else None."""
    body = [node for node in tree.body
            if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0])]
    if len(body) != 2:
        return None
    imported, call = body
    if not (isinstance(imported, ast.ImportFrom) and [(a.name, a.asname) for a in imported.names] == [("main", None)]):
        return None
    if not (_is_main_call(call) or (_is_main_guard(call) and len(call.body) == 1 and _is_main_call(call.body[0]))):
        return None
    if not imported.level:
        return imported.module
    own = module_name(path, root)
    if own is None:
        return None
    package = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
    base = package[:len(package) - (imported.level - 1)]
    return ".".join([*base, *([imported.module] if imported.module else [])])


def app_problems(path: Path, tree: ast.Module, root: Path = REPO) -> list[str]:
    """What keeps an entry point from the shape: an app's, a dispatcher's, or a delegate's dispatcher's."""
    if _commands(tree) is not None:
        return dispatcher_problems(tree, root)
    target = delegated_module(path, tree, root)
    if target is None:
        return shape_problems(tree)
    file = module_file(target, root)
    if file is None:
        return [f"delegates to {target}, which is not in the package folders"]
    inner = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    if _commands(inner) is None:
        return [f"delegates to {target}, which is not a dispatcher (no COMMANDS)"]
    return [f"{target}: {problem}" for problem in dispatcher_problems(inner, root)]


def _allowlisted(rel: str) -> str | None:
    for entry in ALLOWLIST:
        if rel == entry or (entry.endswith("/") and rel.startswith(entry)):
            return entry
    return None


def entry_points(root: Path = REPO) -> dict[str, list[str]]:
    """``{posix path relative to root: shape problems}`` of every entry point in the package folders."""
    found = {}
    for folder in package_folders(root):
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            if is_entry_point(path, tree):
                found[path.relative_to(root).as_posix()] = app_problems(path, tree, root)
    return found


ENTRY_POINTS = entry_points()


def test_entry_points_are_found() -> None:
    # apps known to exist, one per package: the walk reaches every package folder
    for rel in ("common/data/real.py", "ToP/prune.py", "SpaceEvo/block_kd.py", "ElasticViT/tables.py",
                "LitePred/cli.py", "LitePred/__main__.py", "LitePred/apps/build.py"):
        assert rel in ENTRY_POINTS, f"{rel} not found among {sorted(ENTRY_POINTS)}"


@pytest.mark.parametrize("rel", sorted(rel for rel in ENTRY_POINTS if _allowlisted(rel) is None))
def test_entry_point_has_the_app_shape(rel: str) -> None:
    problems = ENTRY_POINTS[rel]
    assert not problems, (f"{rel}: {'; '.join(problems)}. Expected `def run(cfg) -> ...` and "
                          f"`@hydra_app(\"<tree>\", \"<config>\") def main(cfg) -> None` that calls run(cfg), "
                          f"or a dispatcher whose COMMANDS name such apps")


def test_allowlist_is_current() -> None:
    stale = []
    for entry in ALLOWLIST:
        covered = [rel for rel in ENTRY_POINTS if rel == entry or (entry.endswith("/") and rel.startswith(entry))]
        if not covered:
            stale.append(f"{entry} (no entry point there)")
        elif all(not ENTRY_POINTS[rel] for rel in covered):
            stale.append(f"{entry} (has the shape now)")
    assert not stale, f"remove from ALLOWLIST: {stale}"


# --- the check itself ----------------------------------------------------------------------------------

SHAPED = '''
from moonlit.common.config import hydra_app

def run(cfg):
    return {"x": 1}

@hydra_app("common", "report")
def main(cfg) -> None:
    print(run(cfg))

if __name__ == "__main__":
    main()
'''
ARGPARSE = '''
import argparse

def main(argv=None):
    argparse.ArgumentParser().parse_args(argv)

if "__main__" == __name__:
    main()
'''
NESTED_APP = '''
def run(cfg):
    return {}

def main() -> None:
    from moonlit.common.config import hydra_app

    @hydra_app("elasticvit", "tables")
    def _main(cfg):
        run(cfg)

    _main()

if __name__ == "__main__":
    main()
'''
NO_RUN_CALL = '''
import moonlit.common.config as config

def run(cfg):
    return {}

@config.hydra_app("top", "prune")
def main(cfg) -> None:
    run_prune(cfg)
'''


@pytest.mark.parametrize(("source", "expected"), [
    (SHAPED, []),
    (ARGPARSE, ["no module-level def run(cfg)", "main is not decorated with @hydra_app(<tree>, <config>)",
                "main does not call run(cfg)"]),
    (NESTED_APP, ["main is not decorated with @hydra_app(<tree>, <config>)"]),  # the nested call is in _main
    (NO_RUN_CALL, ["main does not call run(cfg)"]),
    ("x = 1\n", ["no module-level def run(cfg)", "no module-level def main(cfg)"]),
], ids=["shaped", "argparse", "nested-app", "no-run-call", "empty"])
def test_shape_problems(source: str, expected: list[str]) -> None:
    assert shape_problems(ast.parse(source)) == expected


def test_walk_finds_guards_and_main_files(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = { "moonlit.paper" = "Paper", '
                                             '"moonlit.configs" = "configs" }\n')
    (tmp_path / "Paper" / "sub").mkdir(parents=True)
    (tmp_path / "configs").mkdir()
    (tmp_path / "Paper" / "app.py").write_text(SHAPED)
    (tmp_path / "Paper" / "tool.py").write_text(ARGPARSE)
    (tmp_path / "Paper" / "library.py").write_text("def main():\n    pass\n")  # no guard: not an entry point
    (tmp_path / "Paper" / "sub" / "__main__.py").write_text("from .cli import main\nmain()\n")
    (tmp_path / "configs" / "stray.py").write_text(ARGPARSE)  # a data package is not walked
    found = entry_points(tmp_path)
    assert sorted(found) == ["Paper/app.py", "Paper/sub/__main__.py", "Paper/tool.py"]
    assert found["Paper/app.py"] == [] and len(found["Paper/tool.py"]) == 3


def test_importing_an_app_module_does_not_import_hydra() -> None:
    # hydra_app imports Hydra when main runs, so library users of an app module (run, tables) stay light
    code = ("import sys, moonlit.elasticvit.tables, moonlit.common.data.real, moonlit.common.report; "
            "assert 'hydra' not in sys.modules, sorted(m for m in sys.modules if m.startswith('hydra'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


DISPATCHER = '''
import importlib
import sys

COMMANDS: dict[str, str] = {"ok": "moonlit.paper.apps.ok", "tool": "moonlit.paper.apps.tool",
                            "gone": "moonlit.paper.apps.gone", "outside": "numpy"}

def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    importlib.import_module(COMMANDS[args[0]]).main()

if __name__ == "__main__":
    main()
'''

ONE_COMMAND = DISPATCHER.replace('"tool": "moonlit.paper.apps.tool",', "").replace(
    '"gone": "moonlit.paper.apps.gone", "outside": "numpy"', "")


def _dispatcher_tree(tmp_path: Path, dispatcher: str = DISPATCHER) -> dict[str, list[str]]:
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = { "moonlit.paper" = "Paper" }\n')
    (tmp_path / "Paper" / "apps").mkdir(parents=True)
    (tmp_path / "Paper" / "__init__.py").write_text("")
    (tmp_path / "Paper" / "apps" / "ok.py").write_text(SHAPED)
    (tmp_path / "Paper" / "apps" / "tool.py").write_text("def main():\n    pass\n")  # no guard: checked as a command
    (tmp_path / "Paper" / "cli.py").write_text(dispatcher)
    (tmp_path / "Paper" / "__main__.py").write_text('"""python -m moonlit.paper."""\nfrom .cli import main\n\nmain()\n')
    (tmp_path / "Paper" / "other.py").write_text("from moonlit.paper.apps.ok import main\n\n"
                                                 "if __name__ == '__main__':\n    main()\n")
    return entry_points(tmp_path)


def test_dispatcher_commands_are_checked_apps(tmp_path: Path) -> None:
    found = _dispatcher_tree(tmp_path)
    assert found["Paper/cli.py"] == [
        "command 'tool': moonlit.paper.apps.tool: no module-level def run(cfg), "
        "main is not decorated with @hydra_app(<tree>, <config>), main does not call run(cfg)",
        "command 'gone': module moonlit.paper.apps.gone is not in the package folders",
        "command 'outside': module numpy is not in the package folders"]
    # the package's __main__.py delegates to the dispatcher: the same problems, named by it
    assert found["Paper/__main__.py"] == [f"moonlit.paper.cli: {p}" for p in found["Paper/cli.py"]]
    # importing an app's main is no dispatcher
    assert found["Paper/other.py"] == ["delegates to moonlit.paper.apps.ok, which is not a dispatcher (no COMMANDS)"]


def test_a_dispatcher_of_apps_has_the_shape(tmp_path: Path) -> None:
    found = _dispatcher_tree(tmp_path, ONE_COMMAND)
    assert found["Paper/cli.py"] == [] and found["Paper/__main__.py"] == []


@pytest.mark.parametrize(("replace", "expected"), [
    (("COMMANDS: dict[str, str] = {", "COMMANDS: dict[str, str] = {**{}, "), "COMMANDS entry at line"),
    (("COMMANDS: dict[str, str] = {", "COMMANDS: dict[str, str] = dict() or {"), "COMMANDS is not a non-empty dict"),
    (('"ok": "moonlit.paper.apps.ok"', '"ok": ".".join(["moonlit", "paper"])'), "is not two string literals"),
    (("importlib.import_module(COMMANDS[args[0]]).main()", "pass"), "main does not read COMMANDS"),
], ids=["spread-entry", "not-a-literal", "computed-module", "main-ignores-commands"])
def test_dispatcher_rule_needs_literal_commands_read_by_main(tmp_path: Path, replace: tuple[str, str],
                                                              expected: str) -> None:
    assert replace[0] in ONE_COMMAND
    found = _dispatcher_tree(tmp_path, ONE_COMMAND.replace(*replace))
    assert any(expected in problem for problem in found["Paper/cli.py"]), found["Paper/cli.py"]
