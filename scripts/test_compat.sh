#!/usr/bin/env bash
# The test suite against the oldest releases moonlit supports (scripts/compat-constraints.txt:
# torch 2.11, torchvision 0.26, timm 1.0.3, transformers 5.17), in a separate .venv-compat.
# Not part of CI (a second multi-GB install); run it when touching version-sensitive code.
#
#   bash scripts/test_compat.sh                # default tier
#   bash scripts/test_compat.sh tests/common   # any pytest arguments, as for scripts/test.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MOONLIT_VENV="$root/.venv-compat" MOONLIT_CONSTRAINTS="$root/scripts/compat-constraints.txt"
bash "$root/scripts/setup.sh"
"$MOONLIT_VENV/bin/python" -c 'import importlib.metadata as md; print("test_compat:", ", ".join(f"{n} {md.version(n)}" for n in ("torch", "torchvision", "timm", "transformers", "onnxruntime")))'
exec bash "$root/scripts/test.sh" "$@"
