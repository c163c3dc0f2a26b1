#!/usr/bin/env bash
# Install (first time) and launch GenStudio on its embedded models: ./run.sh [launch.py options]
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh run
export OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python launch.py "$@"
