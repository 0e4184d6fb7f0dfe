#!/usr/bin/env bash
# Set up, then discover the IOI circuit on the default model; writes out/ioi/circuit.{json,dot,svg}.
# Extra arguments go to `circuitfind discover` (see `.venv/bin/circuitfind discover --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
exec .venv/bin/circuitfind discover --task ioi --out out/ioi "$@"
