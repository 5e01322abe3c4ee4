#!/usr/bin/env bash
# LitePred transfer (leave-one-platform-out): each target platform is adapted from a knowledge pool
# of the other local platforms at budgets N in {0, 100, 300, 1000} target kernels, by every method
# (fine-tune from the most / least similar, residual, affine, scratch, FLOPs-linear, unchanged),
# with the VAE and the uniform sampler; scored on the held-out models measured on the target.
# Builds (and evaluates) any pool predictor that is missing first. Run on an otherwise idle machine.
#
#   bash scripts/reproduce_litepred_transfer.sh                      # target ort-int8 (pool: ort-fp32, ort-fp32-noopt, torch-fp32)
#   bash scripts/reproduce_litepred_transfer.sh ort-int8 ort-fp32    # rotate: each target against the others
#   bash scripts/reproduce_litepred_transfer.sh --seven              # seven platforms (+ ov-fp32, ov-bf16, ov-int8), each a target (hours)
#   bash scripts/reproduce_litepred_transfer.sh --seven ov-bf16      # the seven-platform pool, one target
#   bash scripts/reproduce_litepred_transfer.sh --smoke              # synthetic debug -> debug-int8, small budgets (~3 min)
# Output: outputs/litepred/transfer/{results.jsonl,TABLE.md,accuracy_vs_cost.png}
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
case "${1:-}" in
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    --smoke|--seven|"") ;;
    -*) echo "reproduce_litepred_transfer: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac
bash scripts/setup.sh
py="$root/.venv/bin/python"
export OMP_NUM_THREADS=1 MPLBACKEND=Agg

platforms=(ort-fp32 ort-fp32-noopt torch-fp32 ort-int8)
targets=(ort-int8)
extra=()
experiment=()
if [ "${1:-}" = "--seven" ]; then
    platforms=(ort-fp32 ort-fp32-noopt ort-int8 torch-fp32 ov-fp32 ov-bf16 ov-int8)
    targets=("${platforms[@]}")
    shift
elif [ "${1:-}" = "--smoke" ]; then
    platforms=(debug debug-int8)
    targets=(debug-int8)
    extra=(budget.kernels=300 budget.min_per_type=15 architectures.train=12 architectures.calibration=8
           heldout.n=20 heldout.speed_models=1 heldout.kernel_remeasure=20 adapt.probe=30 adapt.calibration_models=8
           paths.output_root=outputs/smoke)
    experiment=("experiment.budgets=[0,50,150]")
    shift
fi
if [ "$#" -gt 0 ]; then targets=("$@"); fi
# shellcheck disable=SC2206
extra+=(${LITEPRED_OVERRIDES:-})
out="outputs/litepred"
for arg in "${extra[@]}"; do
    case "$arg" in paths.output_root=*) out="${arg#paths.output_root=}/litepred" ;; esac
done

start=$(date +%s)
for platform in "${platforms[@]}"; do
    # every platform is a pool member for some target; the targets' own evaluation gives the held-out truth
    if [ ! -f "${out}/predictors/${platform}/platform.json" ]; then
        echo "== ${platform}: build (pool member) =="
        "$py" -m moonlit.litepred build "platform=${platform}" "${extra[@]}"
    fi
    if [ ! -f "${out}/eval/${platform}/results.json" ]; then
        echo "== ${platform}: evaluate =="
        "$py" -m moonlit.litepred evaluate "platform=${platform}" "${extra[@]}"
    fi
done
list=$(IFS=,; echo "${platforms[*]}")
tlist=$(IFS=,; echo "${targets[*]}")
echo "== transfer experiment: targets [${tlist}], platforms [${list}] =="
"$py" -m moonlit.litepred.transfer.experiment "experiment.platforms=[${list}]" "experiment.targets=[${tlist}]" \
    "${extra[@]}" "${experiment[@]}"
echo "reproduce_litepred_transfer finished in $(( $(date +%s) - start )) s: ${out}/transfer/TABLE.md"
