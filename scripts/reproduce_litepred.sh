#!/usr/bin/env bash
# LitePred on this machine's platforms: build each predictor (profile kernels + calibration
# models, train, calibrate), evaluate it on the held-out models (measured twice), then render
# outputs/litepred/TABLE.md. Run it on an otherwise idle machine: the latencies are measured.
#
#   bash scripts/reproduce_litepred.sh                         # ort-fp32 ort-fp32-noopt ort-int8 torch-fp32
#   bash scripts/reproduce_litepred.sh ort-fp32                # one platform
#   bash scripts/reproduce_litepred.sh --smoke                 # the debug platform, small budgets (~2 min)
# Extra Hydra overrides for every step: LITEPRED_OVERRIDES="budget.kernels=8000 heldout.n=150" bash ...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
case "${1:-}" in
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    --smoke|"") ;;
    -*) echo "reproduce_litepred: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac
bash scripts/setup.sh
py="$root/.venv/bin/python"
export OMP_NUM_THREADS=1 MPLBACKEND=Agg

platforms=(ort-fp32 ort-fp32-noopt ort-int8 torch-fp32)
extra=()
if [ "${1:-}" = "--smoke" ]; then
    platforms=(debug)
    extra=(budget.kernels=300 budget.min_per_type=15 architectures.train=12 architectures.calibration=8
           heldout.n=30 heldout.speed_models=2 paths.output_root=outputs/smoke)
    shift
fi
if [ "$#" -gt 0 ]; then platforms=("$@"); fi
# shellcheck disable=SC2206
extra+=(${LITEPRED_OVERRIDES:-})

start=$(date +%s)
for platform in "${platforms[@]}"; do
    echo "== ${platform}: build =="
    "$py" -m moonlit.litepred build "platform=${platform}" "${extra[@]}"
    echo "== ${platform}: evaluate =="
    "$py" -m moonlit.litepred evaluate "platform=${platform}" "${extra[@]}"
done
out="outputs/litepred"
for arg in "${extra[@]}"; do
    case "$arg" in paths.output_root=*) out="${arg#paths.output_root=}/litepred" ;; esac
done
"$py" -m moonlit.litepred.report "root=$out"
echo "reproduce_litepred finished in $(( $(date +%s) - start )) s: ${out}/TABLE.md"
