#!/usr/bin/env bash
# Reproduce ToP's GLUE table: for each task, fine-tune the teacher, prune, evaluate; then the table
# paper vs ours (outputs/top/<run>/top/TABLE.md).
#
#   bash scripts/reproduce_top_glue.sh --glue-dir /data/glue                       # paper scale, 8 tasks
#   bash scripts/reproduce_top_glue.sh --glue-dir /data/glue --model /models/bert-base-uncased --tasks "rte mrpc"
#   bash scripts/reproduce_top_glue.sh --smoke                                     # generated data, tiny BERT, minutes
#
# Paper scale needs the GLUE TSV folder (or network for the Hub) and bert-base-uncased (hub name or
# folder); each task then trains for the reference's epochs (hours to days on a CPU; use a GPU machine
# with trainer.device=cuda via EXTRA="trainer.device=cuda").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

smoke=0; glue_dir=""; model="bert-base-uncased"; tasks="cola rte qqp mrpc sst2 mnli qnli stsb"; out=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --glue-dir) glue_dir="$2"; shift ;;
        --model) model="$2"; shift ;;
        --tasks) tasks="$2"; shift ;;
        --out) out="$2"; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "reproduce_top_glue: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

bash scripts/setup.sh
py="$root/.venv/bin/python"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-0}" WANDB_MODE="${WANDB_MODE:-offline}" MPLBACKEND=Agg
extra=(${EXTRA:-})

if [ "$smoke" = 1 ]; then
    out="${out:-outputs/top/smoke}"
    "$py" - "$out/fixtures" <<'PY'
import sys
from pathlib import Path
from moonlit.common.data.synthetic import write_glue_tsvs, write_tiny_bert
root = Path(sys.argv[1])
write_glue_tsvs(root / "glue", rows_per_split={"train": 700, "dev": 200, "test": 20}, seed=0)
write_tiny_bert(root / "bert-tiny", num_layers=4, hidden_size=64, num_heads=4, intermediate_size=128, seed=0)
PY
    common=(experiment=smoke "paths.output_root=$out")
    source="this repo on generated data (tiny 4-layer BERT, target sparsity 0.5 for every task)"
    command="bash scripts/reproduce_top_glue.sh --smoke"
else
    out="${out:-outputs/top/reproduce}"
    if [ -z "$glue_dir" ]; then
        echo "reproduce_top_glue: paper scale needs --glue-dir (the GLUE TSV download); or run --smoke" >&2
        exit 2
    fi
    common=("paths.output_root=$out" "data.data_dir=$glue_dir" "model.name_or_path=$model")
    source="this repo at paper scale ($model)"
    command="bash scripts/reproduce_top_glue.sh --glue-dir ..."
fi

start=$(date +%s)
for task in $tasks; do
    task_args=("data.task=$task")
    [ "$smoke" = 1 ] || task_args=("experiment=$task")
    echo "== ToP $task: teacher =="
    "$py" -m moonlit.top.finetune "${common[@]}" "${task_args[@]}" "${extra[@]}"
    echo "== ToP $task: prune =="
    "$py" -m moonlit.top.prune "${common[@]}" "${task_args[@]}" "${extra[@]}"
    echo "== ToP $task: evaluate =="
    "$py" -m moonlit.top.evaluate "${common[@]}" "${task_args[@]}" "${extra[@]}"
done
"$py" -m moonlit.top.report "root=$out" "source=\"$source\"" "command=\"$command\""
echo "reproduce_top_glue finished in $(( $(date +%s) - start )) s"
