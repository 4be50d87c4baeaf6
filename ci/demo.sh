#!/usr/bin/env bash
# The main job of README's Quick start: set up (idempotent), then run `mixbridge demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/ci/setup.sh"
cd "$ROOT"
mixbridge demo "$@"
