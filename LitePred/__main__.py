"""``python -m moonlit.litepred <command> [overrides]``: the ``moonlit-litepred`` dispatcher (:mod:`.cli`)."""

from moonlit.litepred.cli import main

if __name__ == "__main__":
    main()
