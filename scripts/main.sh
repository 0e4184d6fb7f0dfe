#!/usr/bin/env bash
# Set up, then discover the IOI circuit on the default model; writes out/ioi/circuit.{json,dot,svg}.
# Extra arguments go to `circuitfind discover` (see `.venv/bin/circuitfind discover --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# 10 prompts and tau=0.1 keep the first run short on a laptop CPU; --resume continues after a Ctrl-C (and starts
# fresh when there is no checkpoint). The benchmark (benchmarks/bench_acdc.py) runs the 20-prompt, tau=0.05 case.
exec .venv/bin/circuitfind discover --task ioi --n-prompts 10 --threshold 0.1 --resume --out out/ioi "$@"
