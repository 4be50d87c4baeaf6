#!/usr/bin/env bash
# The test command of README's Quick start: set up (idempotent), lint, then run the default suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/ci/setup.sh"
cd "$ROOT"
ruff check mixbridge tests benchmarks
ruff format --check mixbridge tests benchmarks
python -m pytest "$@"
