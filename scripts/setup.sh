#!/usr/bin/env bash
# Create .venv (if missing) and install moonlit editable with the dev extra.
# Idempotent: re-installs only when pyproject.toml changed since the last install.
#
#   bash scripts/setup.sh            # normal use (the other scripts call it)
#   MOONLIT_FORCE_SETUP=1 bash scripts/setup.sh   # re-install regardless
#   MOONLIT_VENV=DIR MOONLIT_CONSTRAINTS=FILE bash scripts/setup.sh   # another venv, pinned versions
#                                                  (scripts/test_compat.sh uses this)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${MOONLIT_VENV:-$root/.venv}"
constraints="${MOONLIT_CONSTRAINTS:-}"
py="$venv/bin/python"
stamp="$venv/.moonlit-setup-stamp"

if [ ! -x "$py" ]; then
    base_python="${PYTHON:-python3}"
    if ! command -v "$base_python" >/dev/null 2>&1; then
        echo "setup: no '$base_python' on PATH; install Python >= 3.10 or set PYTHON=/path/to/python" >&2
        exit 1
    fi
    echo "setup: creating $venv with $($base_python --version 2>&1)"
    "$base_python" -m venv "$venv"
fi

pip_constraints=()
if [ -n "$constraints" ]; then
    [ -f "$constraints" ] || { echo "setup: constraints file $constraints not found" >&2; exit 1; }
    pip_constraints=(-c "$constraints")
fi
want="$(cat pyproject.toml ${constraints:+"$constraints"} | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ] || [ "${MOONLIT_FORCE_SETUP:-0}" = "1" ]; then
    echo "setup: installing moonlit (editable, dev extra) into $venv; the first run downloads torch (~GBs)"
    log="$venv/setup-install.log"
    echo "setup: pip's output goes to $log"
    # The torch wheel is the registry's normal build (CUDA build; it runs on CPU). A CPU-only
    # torch file without a matching torchvision breaks torchvision's ops, checked below.
    if ! { "$py" -m pip install --upgrade pip setuptools wheel \
           && "$py" -m pip install --progress-bar off "${pip_constraints[@]}" -e ".[dev]"; } >"$log" 2>&1; then
        echo "setup: pip install failed; the end of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
else
    echo "setup: $venv is up to date with pyproject.toml${constraints:+ and $constraints}"
fi

# torchvision's compiled ops must load (timm and the image pipeline need them).
if ! "$py" - <<'PY'
import sys
try:
    import torch, torchvision
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    torchvision.ops.nms(boxes, torch.tensor([1.0, 0.5]), 0.5)
except Exception as exc:  # report why, then fail
    import importlib.metadata as md
    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"
    print(f"setup: torchvision's compiled ops do not load on CPU: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"setup: torch {version('torch')}, torchvision {version('torchvision')}. This happens with a "
          "CPU-only torch build that has no matching torchvision (its ops then need libc10_cuda.so). "
          "Install the registry's normal torch wheel together with torchvision: "
          "MOONLIT_FORCE_SETUP=1 after 'rm -rf .venv'.", file=sys.stderr)
    sys.exit(1)
PY
then
    rm -f "$stamp"
    exit 1
fi
