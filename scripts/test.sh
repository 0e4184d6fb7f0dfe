#!/usr/bin/env bash
# Set up, lint, type-check, run the fast tests; with --all (or CI=true) also the slow real-model tests.
set -euo pipefail
cd "$(dirname "$0")/.."

run_slow=false
for arg in "$@"; do
    case $arg in
        --all) run_slow=true ;;
        *) echo "usage: scripts/test.sh [--all]" >&2; exit 2 ;;
    esac
done
[[ ${CI:-} == true ]] && run_slow=true

bash scripts/setup.sh

echo "== ruff"
.venv/bin/ruff check circuitfind tests benchmarks

echo "== mypy"
# Configured in pyproject.toml ([tool.mypy]); its cache (.mypy_cache) makes reruns incremental.
.venv/bin/mypy circuitfind

echo "== pytest (fast)"
.venv/bin/python -m pytest -m "not slow" -q

if $run_slow; then
    echo "== pytest (slow)"
    status=0
    .venv/bin/python -m pytest -m slow -q || status=$?
    # 5: no test carries the slow marker, which is not a failure.
    if [[ $status -ne 0 && $status -ne 5 ]]; then
        exit "$status"
    fi
fi
