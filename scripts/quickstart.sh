#!/usr/bin/env bash
# The main job: every paper's quick pipeline, then outputs/quickstart/REPORT.md (tables + PNG
# plots) rendered from what the runs wrote. The real data comes first (scripts/get_data.sh,
# idempotent); the ToP section runs on it (MiniLM-L6, Rotten Tomatoes), the others on data the
# project generates. Where the fetch fails, ToP falls back to its generated task.
# Each section has a time budget (180 s; 600 s for the whole run on 2 idle cores); a section over
# it prints one line saying so, and with --strict-budget the script then exits with status 3.
# The paper-scale runs are the scripts/reproduce_*.sh scripts.
#
#   bash scripts/quickstart.sh
#   bash scripts/quickstart.sh common top          # only the named sections
#   bash scripts/quickstart.sh --strict-budget     # exit status 3 when a section or the total is over budget
#   bash scripts/quickstart.sh --budget 240        # another per-section budget (seconds)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# One entry per section, in report order: "<name> <python -m module> [hydra overrides...]".
# Each paper's issue appends its own line.
sections=(
    "common moonlit.common.quickstart"
    "top moonlit.top.quickstart"
    "litepred moonlit.litepred.quickstart"
    "spaceevo moonlit.spaceevo.quickstart"
    "elasticvit moonlit.elasticvit.quickstart"
)

names=()
for entry in "${sections[@]}"; do names+=("${entry%% *}"); done
budget=180; total_budget=600; strict=0; wanted=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --strict-budget) strict=1 ;;
        --budget)
            [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "quickstart: --budget needs a whole number of seconds, got '${2:-}'" >&2; exit 2; }
            budget="$2"; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
        -*) echo "quickstart: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *)
            [[ " ${names[*]} " == *" $1 "* ]] || { echo "quickstart: unknown section '$1'; sections are: ${names[*]}" >&2; exit 2; }
            wanted+=("$1") ;;
    esac
    shift
done

bash scripts/setup.sh
py="$root/.venv/bin/python"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline MPLBACKEND=Agg
bash scripts/get_data.sh || echo "quickstart: some real data could not be fetched (see above); sections that need it use generated data" >&2

start=$(date +%s)
over=(); summary=()
for entry in "${sections[@]}"; do
    read -r name module rest <<<"$entry"
    if [ "${#wanted[@]}" -gt 0 ] && [[ ! " ${wanted[*]} " =~ " ${name} " ]]; then
        continue
    fi
    echo "== quickstart: ${name} (python -m ${module} ${rest:-}) =="
    t0=$(date +%s)
    # shellcheck disable=SC2086
    "$py" -m "$module" ${rest:-}
    took=$(( $(date +%s) - t0 ))
    load="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
    echo "== ${name} done in ${took} s (budget ${budget} s; load average ${load}) =="
    summary+=("${name} ${took} s")
    if [ "$took" -gt "$budget" ]; then
        echo "quickstart: section '${name}' took ${took} s, over its ${budget} s budget (load average ${load})" >&2
        over+=("$name")
    fi
done
"$py" -m moonlit.common.report root=outputs/quickstart
total=$(( $(date +%s) - start ))
echo "quickstart finished in ${total} s (${summary[*]}): outputs/quickstart/REPORT.md"
if [ "${#wanted[@]}" -eq 0 ] && [ "$total" -gt "$total_budget" ]; then
    echo "quickstart: the whole run took ${total} s, over its ${total_budget} s budget" >&2
    over+=("total")
fi
if [ "$strict" = 1 ] && [ "${#over[@]}" -gt 0 ]; then
    echo "quickstart: over budget: ${over[*]} (--strict-budget)" >&2
    exit 3
fi
