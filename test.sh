#!/usr/bin/env bash
# Install (first time) and run the whole test suite, browser tests included: ./test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh test
export OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python -m pytest "$@"
