#!/usr/bin/env bash
# Fresh machine -> venv + install + the whole test suite (CPU). This is what CI runs.
# Extra arguments go to pytest (e.g. scripts/test.sh -k orders -x).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup_env.sh
source "$root/scripts/setup_env.sh"
cd "$root"
export DS_ACCELERATOR=cpu TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore::FutureWarning
python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q -ra --durations=15 "$@"
