#!/usr/bin/env bash
# Fresh machine -> venv + install + `nuwa-ds demo` on CPU (writes outputs/demo/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup_env.sh
source "$root/scripts/setup_env.sh"
cd "$root"
export DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nuwa-ds demo --out outputs/demo "$@"
