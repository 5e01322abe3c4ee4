"""Where the Hydra configs live and how apps and tests reach them.

The ``configs/`` folder is the package ``moonlit.configs``. Each paper's apps use the tree
``configs/<tree>/`` as their config path and add ``pkg://moonlit.configs`` to Hydra's search path
(in the primary config), which makes the shared groups (``trainer``, ``logger``, ``paths``)
available everywhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import exit_on_user_error

HYDRA_VERSION_BASE = "1.3"
CONFIG_PACKAGE = "moonlit.configs"


def config_root() -> Path:
    """Absolute path of the ``configs/`` folder."""
    return Path(str(resources.files(CONFIG_PACKAGE)))


def config_dir(tree: str) -> Path:
    """Absolute path of one config tree, e.g. ``config_dir("top")``."""
    path = config_root() / tree
    if not path.is_dir():
        known = sorted(p.name for p in config_root().iterdir() if p.is_dir() and not p.name.startswith("_"))
        raise FileNotFoundError(f"no config tree '{tree}' under {config_root()}; known trees: {known}")
    return path


def hydra_app(tree: str, config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """``hydra.main`` bound to ``configs/<tree>/<config_name>.yaml``.

    Use on a module's thin ``main(cfg)``; the real work stays in an importable function. A user error,
    raised by the task or by Hydra while composing the config (bad override, unknown key, missing
    group option), is printed as one line and exits with status 2
    (:func:`moonlit.common.errors.exit_on_user_error`); ``MOONLIT_DEBUG=1`` shows the traceback.

    Hydra is imported on the first call of ``main``, not when the app module is imported, so importing
    an app module for its library functions (``run``) stays light.
    """

    def decorate(fn: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        config_path = str(config_dir(tree))
        user_full_error = os.environ.get("HYDRA_FULL_ERROR")

        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            # Inside the task, the environment is the user's again (child processes inherit it);
            # Hydra reads HYDRA_FULL_ERROR only after the task has returned or raised.
            with _environment_variable("HYDRA_FULL_ERROR", user_full_error), exit_on_user_error(_program(fn)):
                return fn(cfg)

        @functools.wraps(fn)
        def main(cfg_passthrough: DictConfig | None = None) -> Any:
            import hydra

            nonlocal user_full_error
            user_full_error = os.environ.get("HYDRA_FULL_ERROR")
            hydra_main = hydra.main(config_path=config_path, config_name=config_name, version_base=HYDRA_VERSION_BASE)
            # HYDRA_FULL_ERROR makes Hydra re-raise composition errors instead of printing them over
            # several lines and exiting; exit_on_user_error then reports them.
            with exit_on_user_error(_program(fn)), _environment_variable("HYDRA_FULL_ERROR", "1"):
                return hydra_main(task)(cfg_passthrough)

        return main

    return decorate


_PROGRAM: contextvars.ContextVar[str | None] = contextvars.ContextVar("moonlit_program", default=None)


@contextlib.contextmanager
def program_name(name: str) -> Iterator[None]:
    """Inside, apps name themselves ``name`` in one-line errors: a dispatcher of subcommands (e.g.
    ``moonlit-litepred build``) uses it so that the message names what the user typed."""
    token = _PROGRAM.set(name)
    try:
        yield
    finally:
        _PROGRAM.reset(token)


def _program(fn: Callable[..., Any]) -> str:
    """The name set by :func:`program_name`, else the app's module name (``moonlit.top.prune``), also when
    it runs as ``python -m`` (``__main__``)."""
    if _PROGRAM.get() is not None:
        return str(_PROGRAM.get())
    module = fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).name
    return module


@contextlib.contextmanager
def _environment_variable(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name]`` set to ``value`` (removed for None) for the block, then restored."""
    before = os.environ.get(name)
    try:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def compose_config(
    tree: str, config_name: str, overrides: Sequence[str] = (), *, return_hydra_config: bool = False
) -> DictConfig:
    """Compose a config of any tree (tests, notebooks, or one app composing another's config, e.g. a
    quickstart running the search app's config). Unknown keys in overrides are errors.

    Inside a running Hydra app, Hydra's global state is set aside for the composition and restored.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    if running is not None:
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir(tree)), version_base=HYDRA_VERSION_BASE):
            return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        if running is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(running)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolved plain-dict copy of a config, for JSON metadata (drops the ``hydra`` node)."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return data
