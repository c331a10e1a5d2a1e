#!/usr/bin/env bash
# Creates (or reuses) the virtual environment and installs nuwa_ds with its pinned dependencies.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run twice (pip skips what is there).
# Env: NUWA_VENV (default .venv in the repository root), PYTHON (default python3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NUWA_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
# Activate so that every subprocess (torchrun ranks, DeepSpeed's ninja) uses the venv's tools.
# shellcheck disable=SC1091
source "$venv/bin/activate"
stamp="$venv/.nuwa_installed"
want="$(cat "$root/requirements.txt" "$root/constraints.txt" "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install -q -c "$root/constraints.txt" -r "$root/requirements.txt"
  python -m pip install -q -c "$root/constraints.txt" --no-deps -e "$root"
  echo "$want" > "$stamp"
fi
