#!/usr/bin/env bash
# The test suite. Default tier (not slow, not gpu) runs in <= 15 min on 2 CPU cores.
#
#   bash scripts/test.sh                        # default tier
#   bash scripts/test.sh tests/common -k flops  # any pytest arguments (default tier unless -m is given)
#   bash scripts/test.sh -m slow                # integration runs (minutes each)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
export MPLBACKEND=Agg
marker_given=0
for arg in "$@"; do
    case "$arg" in -m|-m*) marker_given=1 ;; esac
done
if [ "$marker_given" = 0 ]; then
    set -- -m "not slow and not gpu" "$@"
fi
exec "${MOONLIT_VENV:-$root/.venv}/bin/python" -m pytest "$@"
