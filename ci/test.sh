#!/usr/bin/env bash
# The test command of README's Quick start: set up (idempotent), lint, the benchmark's --quick
# mode as a check (every timed fit must agree with R fitted in the same run; no timing
# assertions), then the default test suite (its summary line closes the output).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/ci/setup.sh"
cd "$ROOT"
ruff check mixbridge tests benchmarks
ruff format --check mixbridge tests benchmarks
if [ "${MIXBRIDGE_SKIP_QUICK_BENCHMARK:-0}" != 1 ]; then
    quick_out="$(mktemp -d)/quick.json"
    python benchmarks/run.py --quick --no-plot --out "$quick_out" >"${quick_out%.json}.log" 2>&1 || {
        tail -n 60 "${quick_out%.json}.log"
        echo "benchmarks/run.py --quick failed (a fit disagreed with R or crashed)" >&2
        exit 1
    }
    echo "benchmark --quick: every timed fit agrees with R ($(grep -c '| ok |' "${quick_out%.json}.log") checks)"
fi
python -m pytest "$@"
