#!/usr/bin/env bash
# SpaceEvo on Fashion-MNIST (moonlit.spaceevo.fmnist, configs/spaceevo/fmnist.yaml): block KD of the onnxw_tiny
# students from the EfficientNet-Lite0 ImageNet teacher, LUTs, space search; the top space's supernet (sandwich
# FP32 then LSQ+ QAT on 12,000 training images at 64 px); ranking fidelity (Kendall tau of inherited vs
# trained-alone top-1 over 8 subnets spread over the MACs range); subnet search, INT8 export with the learned
# LSQ+ scales and its test top-1 as ONNX INT8 vs fake quant vs FP32.
#
#   bash scripts/reproduce_spaceevo_fmnist.sh                  # the full run: 1 h 44 min with one stand-alone seed, + 30 min for the second (measured 2026-12-07/08, 2 cores)
#   bash scripts/reproduce_spaceevo_fmnist.sh --smoke          # 80 training images, 1 + 1 epochs, 3 ranked subnets: minutes
#   bash scripts/reproduce_spaceevo_fmnist.sh --out /scratch/outputs
#   EXTRA="ranking.count=10 seed=1" bash scripts/reproduce_spaceevo_fmnist.sh
#
# Needs Fashion-MNIST and the Lite0 weights from bash scripts/get_data.sh (in $MOONLIT_DATA, else data/).
# Writes <out>/spaceevo/fmnist[_smoke]/{section.json,fmnist.md,*.png}; a rerun skips the finished stages.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
data_root="${MOONLIT_DATA:-$root/data}"
smoke=0; out="outputs"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --out) out="${2:?--out needs a folder}"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "reproduce_spaceevo_fmnist: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for needed in fashion_mnist/FashionMNIST/raw efficientnet_lite0/model.safetensors; do
    if [ ! -e "$data_root/$needed" ]; then
        echo "reproduce_spaceevo_fmnist: $data_root/$needed not found: run bash scripts/get_data.sh (or set MOONLIT_DATA)" >&2
        exit 2
    fi
done
if [ "$smoke" = 1 ]; then
    run_dir="$out/spaceevo/fmnist_smoke"; command="bash scripts/reproduce_spaceevo_fmnist.sh --smoke"
    # tests/spaceevo/test_fmnist.py runs the same slice
    sizes=(data.train_subset=8 data.holdout_per_class=2 data.batch_size=8 data.eval_batch_size=100 data.num_workers=0
           data.val_subset=20 kd.fp32_steps=2 kd.lsq_steps=1 kd.batch_size=8 lut.num_samples=4 lut.batch_size=8
           lut.calib_batches=1 lut.eval_batches=1 search.num_samples=400 search.budget=24 search.population=8
           search.tournament=4 search.rerank_top=4 search.rerank_repeats=5 supernet.fp32_epochs=1 supernet.qat_epochs=1
           supernet.batch_size=16 supernet.bn_batches=2 ranking.count=3 ranking.candidates=20 ranking.bn_batches=2 ranking.jobs=1
           subnet_search.population=8 subnet_search.parents=4 subnet_search.mutations=4 subnet_search.crossovers=4
           subnet_search.iterations=2 subnet_search.bn_batches=2 subnet_search.batch_size=10 deploy.calibration_batches=1)
else
    run_dir="$out/spaceevo/fmnist"; command="bash scripts/reproduce_spaceevo_fmnist.sh"
    sizes=()
fi
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}" MPLBACKEND=Agg
extra=(${EXTRA:-})
start=$(date +%s)
"$root/.venv/bin/python" -m moonlit.spaceevo.fmnist "paths.output_root=$out" "output_dir=$run_dir" "command='$command'" \
    "${sizes[@]}" \
    "${extra[@]}"
echo "== reproduce_spaceevo_fmnist done in $(( $(date +%s) - start )) s: $run_dir/fmnist.md =="
