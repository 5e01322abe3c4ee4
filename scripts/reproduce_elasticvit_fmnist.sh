#!/usr/bin/env bash
# ElasticViT's sampler ablation on Fashion-MNIST (moonlit.elasticvit.ablation, configs/elasticvit/ablation.yaml):
# the reduced hybrid supernet trained with (a) uniform, (b) complexity-aware and (c) complexity- + performance-aware
# sampling, same seed and steps; per-level top-1 of each level's smallest / middle / largest subnet, the gradient
# conflict of consecutive steps, and ranking fidelity (Kendall tau) of (c) against subnets trained alone.
#
#   bash scripts/reproduce_elasticvit_fmnist.sh                 # the full run (scale=fmnist)
#   bash scripts/reproduce_elasticvit_fmnist.sh --smoke         # the same on 200 training images, a few minutes
#   bash scripts/reproduce_elasticvit_fmnist.sh --jobs 2        # the three samplers' supernets 2 at a time, 1 thread each
#   bash scripts/reproduce_elasticvit_fmnist.sh --out /scratch/outputs
#   EXTRA="ranking.count=12 seed=1" bash scripts/reproduce_elasticvit_fmnist.sh
#
# Needs Fashion-MNIST from bash scripts/get_data.sh (in $MOONLIT_DATA, else data/). Writes
# <out>/elasticvit/ablation/<scale>/{section.json,ablation.md,ablation.png,ranking.png}; a rerun resumes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
data_root="${MOONLIT_DATA:-$root/data}"
scale="fmnist"; out="outputs"; jobs=1
while [ "$#" -gt 0 ]; do
    case "$1" in
        --smoke) scale="fmnist_smoke" ;;
        --out) out="${2:?--out needs a folder}"; shift ;;
        --jobs) jobs="${2:?--jobs needs a number}"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "reproduce_elasticvit_fmnist: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "reproduce_elasticvit_fmnist: --jobs '$jobs' is not a positive integer" >&2; exit 2; }
if [ ! -d "$data_root/fashion_mnist/FashionMNIST/raw" ]; then
    echo "reproduce_elasticvit_fmnist: Fashion-MNIST not found in $data_root/fashion_mnist: run bash scripts/get_data.sh (or set MOONLIT_DATA)" >&2
    exit 2
fi
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}" MPLBACKEND=Agg
extra=(${EXTRA:-})
start=$(date +%s)
py="$root/.venv/bin/python"
if [ "$jobs" -gt 1 ]; then
    # the default samplers' supernets side by side (only=<sampler>: train and score, one thread each); the run
    # after them finds every sampler done and adds the ranking and the report
    logs="$out/elasticvit/ablation/logs-$scale"
    failed() { echo "reproduce_elasticvit_fmnist: a sampler's run failed; its log is in $logs" >&2; kill $(jobs -p) 2>/dev/null; exit 1; }
    mkdir -p "$logs"
    running=0
    for sampler in uniform complexity_only adjacent_step; do
        echo "training $sampler (log: $logs/$sampler.log)"
        OMP_NUM_THREADS=1 "$py" -m moonlit.elasticvit.ablation "scale=$scale" "paths.output_root=$out" "only=$sampler" \
            "${extra[@]}" > "$logs/$sampler.log" 2>&1 &
        running=$((running + 1))
        if [ "$running" -ge "$jobs" ]; then wait -n || failed; running=$((running - 1)); fi
    done
    while [ "$running" -gt 0 ]; do wait -n || failed; running=$((running - 1)); done
fi
"$py" -m moonlit.elasticvit.ablation "scale=$scale" "paths.output_root=$out" "${extra[@]}"
echo "== reproduce_elasticvit_fmnist ($scale) done in $(( $(date +%s) - start )) s: $out/elasticvit/ablation/$scale =="
