#!/usr/bin/env bash
# Install (first time) and launch GenStudio on its embedded models: ./run.sh [launch.py options]
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh run
export OMP_WAIT_POLICY=PASSIVE
# --autolaunch opens the studio in your browser when there is one; pass --no-browser to skip it.
exec .venv/bin/python launch.py --autolaunch "$@"
