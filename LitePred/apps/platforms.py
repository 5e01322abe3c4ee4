"""``moonlit-litepred platforms``: the profiling platforms a ``platform=`` override can name, one a line.

    python -m moonlit.litepred.apps.platforms
"""

from __future__ import annotations

from omegaconf import DictConfig

from moonlit.common.config import hydra_app
from moonlit.litepred.profile import list_platforms


def run(cfg: DictConfig) -> list[str]:
    """The registered profiling platforms (``moonlit.litepred.profile.list_platforms``)."""
    return list(list_platforms())


@hydra_app("litepred", "platforms")
def main(cfg: DictConfig) -> None:
    print("\n".join(run(cfg)))


if __name__ == "__main__":
    main()
