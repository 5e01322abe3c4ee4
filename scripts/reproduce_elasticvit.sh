#!/usr/bin/env bash
# ElasticViT at paper scale (ICCV'23), stage by stage through the apps and configs/elasticvit:
#   tables     offline FLOPs tables: distinct subnets per FLOPs level of the full space        (no data)
#   train      the supernet with conflict-aware sampling and KD from two teachers             (ImageNet + teachers)
#   search     evolution under a FLOPs band, top-1 on held-out train images as fitness        (ImageNet)
#   evaluate   top-1 of the nine named models (elasticvit_t1 ... l3) from the trained supernet (ImageNet)
#   benchmark  the named models and timm baselines, FP32 vs INT8 onnxruntime, 1 thread        (no data)
#
#   bash scripts/reproduce_elasticvit.sh                          # every stage (600 + 10 epochs: GPUs advised)
#   bash scripts/reproduce_elasticvit.sh --stages "evaluate benchmark"
#   bash scripts/reproduce_elasticvit.sh --sampling uniform       # an ablation sampler (configs/elasticvit/sampling)
#   bash scripts/reproduce_elasticvit.sh --imagenet /data/imagenet --teachers /data/elasticvit/teachers --out /scratch/outputs
#   bash scripts/reproduce_elasticvit.sh --smoke                  # every stage on generated images / random weights, minutes
#   NPROC=8 EXTRA="..." bash scripts/reproduce_elasticvit.sh      # train under torchrun; EXTRA: overrides for every stage run
#
# ImageNet is an ImageFolder root with train/<class>/* and val/<class>/* (default: $MOONLIT_DATA/imagenet,
# else data/imagenet); the teachers are t1.safetensors and t2.safetensors (swsl ResNeXt-101 32x4d and 32x8d,
# timm's resnext101_32x{4,8}d.fb_swsl_ig1b_ft_in1k) in --teachers (default: <data>/elasticvit/teachers).
# Every stage resumes from what an earlier run wrote under <out>/elasticvit.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=lib/stages.sh
source scripts/lib/stages.sh

all_stages="tables train search evaluate benchmark"
data_root="${MOONLIT_DATA:-$root/data}"
smoke=0; stages="$all_stages"; out=""; sampling="adjacent_step"
imagenet="$data_root/imagenet"; teachers="$data_root/elasticvit/teachers"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --stages) stages="${2:?--stages needs a list}"; shift ;;
        --sampling) sampling="${2:?--sampling needs a sampler name}"; shift ;;
        --out) out="${2:?--out needs a folder}"; shift ;;
        --imagenet) imagenet="${2:?--imagenet needs a folder}"; shift ;;
        --teachers) teachers="${2:?--teachers needs a folder}"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "reproduce_elasticvit: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
check_stages reproduce_elasticvit "$all_stages" "$stages"
[ -f "configs/elasticvit/sampling/$sampling.yaml" ] || {
    echo "reproduce_elasticvit: unknown sampler '$sampling'; samplers are: $(ls configs/elasticvit/sampling | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
    exit 2; }
models="elasticvit_t1 elasticvit_t2 elasticvit_s1 elasticvit_s2 elasticvit_m elasticvit_l1 elasticvit_l1_5 elasticvit_l2 elasticvit_l3"

if [ "$smoke" = 0 ]; then
    out="${out:-outputs/elasticvit_paper}"
    check_imagenet reproduce_elasticvit "$imagenet" "$stages" "tables benchmark"
    if [[ " $stages " == *" train "* ]] && { [ ! -f "$teachers/t1.safetensors" ] || [ ! -f "$teachers/t2.safetensors" ]; }; then
        echo "reproduce_elasticvit: the train stage needs the teachers $teachers/t1.safetensors and t2.safetensors (swsl ResNeXt-101 32x4d / 32x8d weights as safetensors): pass --teachers DIR" >&2
        exit 2
    fi
else
    out="${out:-outputs/elasticvit_smoke}"
fi

bash scripts/setup.sh
py="$root/.venv/bin/python"
export HF_HUB_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}" MPLBACKEND=Agg
extra=(${EXTRA:-})
launch=("$py" -m)
ddp=()
if [ "${NPROC:-1}" -gt 1 ]; then launch=("$root/.venv/bin/torchrun" --standalone "--nproc_per_node=$NPROC" -m); ddp=(trainer=ddp); fi
paths=("paths.output_root=$out")

if [ "$smoke" = 1 ]; then
    # The supernet trains on the reduced space of configs/elasticvit/experiment/smoke.yaml (generated images,
    # a random teacher); search, evaluate and benchmark run on the full space with random weights.
    tables=('levels=[100,300]' per_level=20 progress=false)
    train=(experiment=smoke "sampling=$sampling")
    search=(fitness=proxy evolution.population=16 evolution.parents=8 evolution.mutations=4 evolution.crossovers=4
            evolution.iterations=2)
    evaluate=(data=generated data.batch_size=16)
    models="elasticvit_t1"
    benchmark=('models=[elasticvit_t1]' 'baselines=[mobilenetv3_large_100]' timing.rounds=5 timing.warmup=1)
else
    checkpoint="$out/elasticvit/train/$sampling/checkpoints"
    tables=()
    train=("sampling=$sampling" "data.root=$imagenet" "teachers.models.0.pretrained=$teachers/t1.safetensors"
           "teachers.models.1.pretrained=$teachers/t2.safetensors" "${ddp[@]}")
    search=("checkpoint=$checkpoint" "data.root=$imagenet")
    evaluate=("checkpoint=$checkpoint" "data.root=$imagenet")
    benchmark=()
fi

start=$(date +%s)
for stage in $stages; do
    t0=$(date +%s)
    echo "== elasticvit $stage =="
    case "$stage" in
        tables) "$py" -m moonlit.elasticvit.tables "${paths[@]}" "${tables[@]}" "${extra[@]}" ;;
        train) "${launch[@]}" moonlit.elasticvit.train "${paths[@]}" "${train[@]}" "${extra[@]}" ;;
        search) "$py" -m moonlit.elasticvit.search "${paths[@]}" "${search[@]}" "${extra[@]}" ;;
        evaluate)
            for model in $models; do
                "$py" -m moonlit.elasticvit.evaluate "${paths[@]}" "model=$model" "${evaluate[@]}" "${extra[@]}"
            done ;;
        benchmark) "$py" -m moonlit.elasticvit.benchmark "${paths[@]}" "${benchmark[@]}" "${extra[@]}" ;;
    esac
    echo "== elasticvit $stage done in $(( $(date +%s) - t0 )) s =="
done
echo "reproduce_elasticvit finished in $(( $(date +%s) - start )) s: $out/elasticvit"
