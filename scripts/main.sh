#!/usr/bin/env bash
# Set up, then discover the IOI circuit on the default model; writes out/ioi/circuit.{json,dot,svg}.
# Extra arguments go to `circuitfind discover` (see `.venv/bin/circuitfind discover --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# EAP-IG scores every edge from 5 gradient passes over 20 IOI prompts; the circuit's size is chosen on prompts the
# scores never saw (cross-fitting over 4 folds of the 20: twice the smallest top-k whose validation faithfulness
# reaches 0.8), then its faithfulness on 20 held-out prompts is printed with its 95% bootstrap interval.
# ACDC is one flag away: --method acdc --threshold 0.05 (about an hour on a 2-core CPU; --resume continues it
# after a Ctrl-C, and starts fresh when there is no checkpoint).
exec .venv/bin/circuitfind discover --task ioi --method eap-ig --target 0.8 --metric logit_diff \
    --n-prompts 20 --held-out 20 --resume --out out/ioi "$@"
