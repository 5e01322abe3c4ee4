#!/usr/bin/env bash
# ToP on real language: the MiniLM-L6 teacher fine-tuned on each task, ToP at several MAC-sparsity
# targets, ToP without ranking distillation at the largest target, then every arm side by side
# (static top-k and random dropping at ToP's kept counts, ONNX FP32/INT8, CPU latency):
# <out>/top/study/REPORT.md, one section per task, with its plots.
#
#   bash scripts/reproduce_top_real.sh                       # rt and spam, the full schedule (CPU: about 90 min per task)
#   bash scripts/reproduce_top_real.sh --tasks rt             # one task
#   bash scripts/reproduce_top_real.sh --smoke                # a slice of rt in minutes (300 training sentences, 1 epoch)
#   EXTRA="trainer.device=cuda" bash scripts/reproduce_top_real.sh   # on a GPU machine
#
# Data and weights come from bash scripts/get_data.sh (run first, idempotent). A stage whose
# results.json exists is skipped, so an interrupted run continues where it stopped (the pruning
# stage also resumes inside a run from its epoch checkpoints); --fresh retrains everything.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

smoke=0; tasks="rt spam"; out=""; targets="0.5 0.6 0.7"; fresh=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --tasks) tasks="$2"; shift ;;
        --targets) targets="$2"; shift ;;
        --out) out="$2"; shift ;;
        --fresh) fresh=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "reproduce_top_real: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for task in $tasks; do
    case "$task" in rt|spam) ;; *) echo "reproduce_top_real: unknown task '$task' (rt, spam)" >&2; exit 2 ;; esac
done
for target in $targets; do
    if ! [[ "$target" =~ ^0\.[0-9]+$ ]]; then
        echo "reproduce_top_real: a target is a MAC sparsity in (0, 1), got '$target'" >&2; exit 2
    fi
done

bash scripts/setup.sh
py="$root/.venv/bin/python"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}" MPLBACKEND=Agg
extra=(${EXTRA:-})

artefacts="minilm"
for task in $tasks; do artefacts="$artefacts,$task"; done
bash scripts/get_data.sh "artefacts=[$artefacts]"

if [ "$smoke" = 1 ]; then
    out="${out:-outputs/top_real_smoke}"
    [ "$tasks" = "rt spam" ] && tasks="rt"
    [ "$targets" = "0.5 0.6 0.7" ] && targets="0.5"
    slice=(data.max_train=300 data.max_eval=128 data.selection_max=128 finetune.epochs=1 prune.epochs=1 prune.sparsity_warmup_epochs=0.5
           speed.rounds=3 speed.warmup=1 speed.batches=2 speed.single_samples=8)
    label="this repo on real data, smoke slice (300 training sentences, 1 epoch each)"
    command="bash scripts/reproduce_top_real.sh --smoke"
else
    out="${out:-outputs/top_real}"
    slice=()
    label="this repo on real data"
    command="bash scripts/reproduce_top_real.sh --tasks <task>"
fi
if [ "$fresh" = 1 ] && [ -d "$out/top" ]; then
    aside="$out/top.replaced-$(date -u +%Y%m%dT%H%M%SZ)"
    mv "$out/top" "$aside"
    echo "reproduce_top_real: --fresh: moved the earlier run to $aside"
fi

# The training stages take the slice's overrides except speed.* (the study's own group).
train_args=()
for arg in "${slice[@]}"; do case "$arg" in speed.*) ;; *) train_args+=("$arg") ;; esac; done

start=$(date +%s)
for task in $tasks; do
    t0=$(date +%s)
    common=("experiment=${task}_minilm" "paths.output_root=$out")
    prune_root="$out/top/prune/$task"
    if [ -f "$out/top/finetune/$task/results.json" ]; then
        echo "== ToP $task: teacher already fine-tuned ($out/top/finetune/$task) =="
    else
        echo "== ToP $task: fine-tune the MiniLM-L6 teacher =="
        "$py" -m moonlit.top.finetune "${common[@]}" "${train_args[@]}" "${extra[@]}"
    fi
    largest="$(printf '%s\n' $targets | sort -g | tail -n 1)"
    runs=()
    for target in $targets; do runs+=("t$target:pruning.target_sparsity=$target"); done
    runs+=("t$largest-norank:pruning.target_sparsity=$largest prune.ranking_alpha=0")
    for run in "${runs[@]}"; do
        name="${run%%:*}"
        read -r -a overrides <<<"${run#*:}"
        if [ -f "$prune_root/$name/results.json" ]; then
            echo "== ToP $task: $name already pruned =="
            continue
        fi
        echo "== ToP $task: prune $name (${overrides[*]}) =="
        "$py" -m moonlit.top.prune "${common[@]}" "output_dir=$prune_root/$name" "${overrides[@]}" "${train_args[@]}" \
            "${extra[@]}"
    done
    echo "== ToP $task: every arm side by side =="
    "$py" -m moonlit.top.study "${common[@]}" "${slice[@]}" \
        "source=\"$label (MiniLM-L6, task $task), $(date -u +%Y-%m-%d)\"" "command=\"${command/<task>/$task}\""
    echo "== ToP $task done in $(( $(date +%s) - t0 )) s =="
done
"$py" -m moonlit.common.report "root=$out/top/study" "title=\"ToP on real language (MiniLM-L6)\""
echo "reproduce_top_real finished in $(( $(date +%s) - start )) s"
