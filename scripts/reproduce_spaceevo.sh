#!/usr/bin/env bash
# SpaceEvo at paper scale (ICCV'23), stage by stage through the apps and configs/spaceevo:
#   block_kd       block-wise KD of every (stage, block type) student from the teacher   (ImageNet)
#   lut            block LUTs: NSR, MFLOPs, latency of sampled sub-stages                 (ImageNet)
#   space_search   Q-T score + aging evolution over the hyperspace, from those LUTs
#   supernet       the published space's supernet: sandwich FP32 then LSQ+ QAT            (ImageNet)
#   subnet_search  evolution under a LitePred ort-int8 latency band, INT8 top-1 fitness   (ImageNet)
#   evaluate       INT8 (LSQ+) top-1 of the target's SEQnets on the trained supernet     (ImageNet)
#   benchmark      the SEQnets and timm baselines, FP32 vs INT8 onnxruntime, 1 thread    (no data)
#
#   bash scripts/reproduce_spaceevo.sh                            # every stage, target vnni (weeks on CPU; GPUs advised)
#   bash scripts/reproduce_spaceevo.sh --target pixel4 --stages "supernet evaluate"
#   bash scripts/reproduce_spaceevo.sh --imagenet /data/imagenet --out /scratch/outputs
#   bash scripts/reproduce_spaceevo.sh --smoke                    # every stage on generated images, minutes
#   NPROC=8 EXTRA="..." bash scripts/reproduce_spaceevo.sh        # block_kd/supernet under torchrun; EXTRA: overrides for every stage run
#
# ImageNet is an ImageFolder root with train/<class>/* and val/<class>/* (default: $MOONLIT_DATA/imagenet,
# else data/imagenet). subnet_search needs the LitePred ort-int8 predictor under <out>/litepred/predictors
# (bash scripts/reproduce_litepred.sh ort-int8 with paths.output_root=<out>). Every stage resumes from
# what an earlier run wrote under <out>/spaceevo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=lib/stages.sh
source scripts/lib/stages.sh

all_stages="block_kd lut space_search supernet subnet_search evaluate benchmark"
smoke=0; stages="$all_stages"; out=""; target="vnni"; imagenet="${MOONLIT_DATA:-$root/data}/imagenet"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --stages) stages="${2:?--stages needs a list}"; shift ;;
        --target) target="${2:?--target needs vnni or pixel4}"; shift ;;
        --out) out="${2:?--out needs a folder}"; shift ;;
        --imagenet) imagenet="${2:?--imagenet needs a folder}"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "reproduce_spaceevo: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
check_stages reproduce_spaceevo "$all_stages" "$stages"
case "$target" in
    vnni) hyperspace=onnxw; experiment=vnni; space=onnxw-151122-023231 ;;
    pixel4) hyperspace=mobilew; experiment=pixel4; space=mobilew-122222-155400 ;;
    *) echo "reproduce_spaceevo: unknown target '$target' (vnni, pixel4)" >&2; exit 2 ;;
esac
seqnets="SEQnet@$target-A0 SEQnet@$target-A1 SEQnet@$target-A2 SEQnet@$target-A3 SEQnet@$target-A4"

if [ "$smoke" = 0 ]; then
    out="${out:-outputs/spaceevo_paper}"
    check_imagenet reproduce_spaceevo "$imagenet" "$stages" "space_search benchmark"
else
    out="${out:-outputs/spaceevo_smoke}"
fi

bash scripts/setup.sh
py="$root/.venv/bin/python"
export HF_HUB_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}" MPLBACKEND=Agg
extra=(${EXTRA:-})
launch=("$py" -m)
ddp=()
if [ "${NPROC:-1}" -gt 1 ]; then launch=("$root/.venv/bin/torchrun" --standalone "--nproc_per_node=$NPROC" -m); ddp=(trainer=ddp); fi
paths=("paths.output_root=$out" "paths.cache_dir=$out/.cache")
abs_out="$(realpath -m "$out")"  # space_search reads a relative lut_dir from the repository's parent

if [ "$smoke" = 1 ]; then
    # Generated images, the reduced hyperspace onnxw_tiny, a random-weight teacher
    # and a few steps per stage; the supernet stages take configs/spaceevo/experiment/smoke.yaml.
    hyperspace=onnxw_tiny
    images="$out/images"
    "$py" -c "from moonlit.common.data.synthetic import write_image_folder as w; w('$images', 4, {'train': 12, 'val': 4}, image_size=96, seed=0)"
    data=("data.root=$images" data.holdout_per_class=2 data.num_workers=0)
    block_kd=(hyperspace=$hyperspace "${data[@]}" teacher.model=efficientnet_b0 teacher.num_classes=4
              teacher.calibrate_bn_batches=2 'resolutions=[64,96]' batch_size=8 fp32.steps=2 lsq.steps=1
              eval_batches=1)
    lut=(hyperspace=$hyperspace num_samples=4 batch_size=8 calib_batches=1 eval_batches=1 progress=false)
    space_search=(hyperspace=$hyperspace "lut_dir=$abs_out/spaceevo/block_lut/$hyperspace" evolution.population=8
                  evolution.tournament=4 evolution.budget=24 'constraints_ms=[0.5,1.0]' num_samples=2000 batch_size=200 'other_latency.resolutions=[64,96]'
                  'other_latency.ms=[0.05,0.1]' rerank.top=4 rerank.repeats=5 'tracked_spaces=[]' progress=false)
    supernet=(experiment=smoke)
    checkpoint="$out/spaceevo/supernet/smoke/checkpoints/qat"
    subnet_search=(space=onnxw-151122-023231 "checkpoint=$checkpoint" "${data[@]}" data.img_size=48 data.batch_size=8
                   data.cache=true 'resolutions=[32,48]' bn_batches=2 evolution.population=8 evolution.parents=4
                   evolution.mutations=4 evolution.crossovers=4 evolution.iterations=2 constraint.kind=macs
                   constraint.max_mmacs=100 constraint.min_mmacs=0)
    seqnets="SEQnet@vnni-A0"
    evaluate=(quant=true onnx.enabled=true "checkpoint=$checkpoint" "data.root=$images" data.num_workers=0 data.img_size=48
              data.batch_size=8)
    benchmark=('seqnets=[SEQnet@vnni-A0]' 'baselines=[resnet18]' timing.rounds=5 timing.warmup=1)
else
    data=("data.root=$imagenet")
    block_kd=(hyperspace=$hyperspace "${data[@]}")
    lut=(hyperspace=$hyperspace)
    space_search=(hyperspace=$hyperspace "lut_dir=$abs_out/spaceevo/block_lut/$hyperspace")
    supernet=(experiment=$experiment "${data[@]}" "${ddp[@]}")
    checkpoint="$out/spaceevo/supernet/$space/checkpoints/qat"
    subnet_search=(space=$space "checkpoint=$checkpoint" "${data[@]}")
    evaluate=(quant=true onnx.enabled=true "checkpoint=$checkpoint" "${data[@]}")
    benchmark=()
fi

start=$(date +%s)
for stage in $stages; do
    t0=$(date +%s)
    echo "== spaceevo $stage =="
    case "$stage" in
        block_kd) "${launch[@]}" moonlit.spaceevo.block_kd "${paths[@]}" "${block_kd[@]}" "${extra[@]}" ;;
        lut) "$py" -m moonlit.spaceevo.lut_builder "${paths[@]}" "${lut[@]}" "${extra[@]}" ;;
        space_search) "$py" -m moonlit.spaceevo.space_search "${paths[@]}" "${space_search[@]}" "${extra[@]}" ;;
        supernet) "${launch[@]}" moonlit.spaceevo.train_supernet "${paths[@]}" "${supernet[@]}" "${extra[@]}" ;;
        subnet_search) "$py" -m moonlit.spaceevo.subnet_search "${paths[@]}" "${subnet_search[@]}" "${extra[@]}" ;;
        evaluate)
            for model in $seqnets; do
                "$py" -m moonlit.spaceevo.evaluate "${paths[@]}" "model=$model" "${evaluate[@]}" \
                    "output_dir=$out/spaceevo/evaluate/$model" "${extra[@]}"
            done ;;
        benchmark) "$py" -m moonlit.spaceevo.benchmark "${paths[@]}" "${benchmark[@]}" "${extra[@]}" ;;
    esac
    echo "== spaceevo $stage done in $(( $(date +%s) - t0 )) s =="
done
echo "reproduce_spaceevo finished in $(( $(date +%s) - start )) s: $out/spaceevo"
