#!/usr/bin/env bash
# The main job: every paper's quick pipeline, then outputs/quickstart/REPORT.md (tables + PNG
# plots) rendered from what the runs wrote. The real data comes first (scripts/get_data.sh,
# idempotent); the ToP section runs on it (MiniLM-L6, Rotten Tomatoes), the others on data the
# project generates. Where the fetch fails, ToP falls back to its generated task.
#
#   bash scripts/quickstart.sh
#   bash scripts/quickstart.sh common        # only the named sections
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
py="$root/.venv/bin/python"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline MPLBACKEND=Agg
bash scripts/get_data.sh || echo "quickstart: some real data could not be fetched (see above); sections that need it use generated data" >&2

# One entry per section, in report order: "<name> <python -m module> [hydra overrides...]".
# Each paper's issue appends its own line.
sections=(
    "common moonlit.common.quickstart"
    "top moonlit.top.quickstart"
    "litepred moonlit.litepred.quickstart"
    "spaceevo moonlit.spaceevo.quickstart"
    "elasticvit moonlit.elasticvit.quickstart"
)

wanted=("$@")
start=$(date +%s)
for entry in "${sections[@]}"; do
    read -r name module rest <<<"$entry"
    if [ "${#wanted[@]}" -gt 0 ] && [[ ! " ${wanted[*]} " =~ " ${name} " ]]; then
        continue
    fi
    echo "== quickstart: ${name} (python -m ${module} ${rest:-}) =="
    t0=$(date +%s)
    # shellcheck disable=SC2086
    "$py" -m "$module" ${rest:-}
    echo "== ${name} done in $(( $(date +%s) - t0 )) s =="
done
"$py" -m moonlit.common.report outputs/quickstart
echo "quickstart finished in $(( $(date +%s) - start )) s: outputs/quickstart/REPORT.md"
