"""``python -m moonlit.litepred <command> [overrides]``: the ``moonlit-litepred`` CLI."""

from moonlit.litepred.cli import main

main()
