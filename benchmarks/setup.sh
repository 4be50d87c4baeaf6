#!/usr/bin/env bash
# Set-up for the benchmark's third-party peers, in the benchmark's OWN venv (benchmarks/.venv),
# never in the project venv: the Rust-backed PyPI packages glmm, mixedlm-rs and mixedlm.
# Idempotent; `python benchmarks/run.py` finds the peers through benchmarks/.venv/bin/python.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${MIXBRIDGE_BENCH_VENV:-$HERE/.venv}"
PYTHON="${PYTHON:-python3}"
PEERS="glmm==0.6.2 mixedlm-rs==0.2.0 mixedlm==1.3.0"
say() { printf '[bench setup] %s\n' "$*" >&2; }
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
# numpy/pandas for the worker script; each peer separately so one failure does not hide others.
"$VENV/bin/python" -m pip install -q numpy pandas >&2
for pkg in $PEERS; do
    if "$VENV/bin/python" -m pip install -q "$pkg" >&2; then
        say "installed $pkg"
    else
        say "FAILED to install $pkg (the benchmark will report it as not installed)"
    fi
done
"$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E '^(glmm|mixedlm|mixedlm-rs|mixedlm_rs|numpy|pandas) ' >&2 || true
