#!/usr/bin/env bash
# Idempotent set-up for ./run.sh and ./test.sh: a virtual environment at .venv with everything
# the studio needs (embedded model packages included); for tests also Debian's Chromium.
# Fast when nothing changed: a stamp of the requirement files skips pip entirely.
set -euo pipefail
mode=${1:-run}
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python=$candidate; break
    fi
  done
fi
[ -n "$python" ] || { echo "GenStudio needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$python" -m venv .venv

extras=""; [ "$mode" = test ] && extras="[test,scale]"

# llama.cpp is compiled for the CPU it is built on (-march=native). On virtual machines with AMX in
# cpuid, llama.cpp's AMX kernels crashed the studio on the first prompt (SIGSEGV in
# ggml_backend_amx_mul_mat), both where the kernel had not enabled AMX and on a CI machine whose
# state we cannot see; /proc/cpuinfo is not a reliable guard. So wherever the compiler would use
# AMX, llama.cpp is built without it (AMX speeds up only large quantised batches; AVX-512 stays),
# and never from pip's wheel cache, which may hold an AMX build.
# (The compiler's defines are read whole first: `cc ... | grep -q` under pipefail fails whenever
# grep stops reading before cc has written everything, and the AMX build slipped through.)
llama_flags=""
native_defines=$(echo | ${CC:-cc} -march=native -dM -E - 2>/dev/null || true)
if [ "$(uname -m)" = x86_64 ] && [[ "$native_defines" == *__AMX_TILE__* ]]; then
  llama_flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi

stamp_file=.venv/.genstudio-setup-$mode
stamp=$( (cat pyproject.toml requirements/*.txt scripts/private_openmp.py; echo "$llama_flags") | sha256sum | cut -c1-16)
installed=$(cat "$stamp_file" 2>/dev/null || true)
# A test install is a superset of a run install: after ./test.sh, ./run.sh installs nothing.
[ "$mode" = run ] && [ "$(cat .venv/.genstudio-setup-test 2>/dev/null)" = "$stamp" ] && installed=$stamp
if [ "$installed" != "$stamp" ]; then
  echo "Installing GenStudio ($mode) into .venv ..."
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".$extras"
  .venv/bin/python -m pip install -q --no-deps --no-warn-conflicts -r requirements/nodeps.txt
  if [ -n "$llama_flags" ]; then  # built first (its dependencies come with llm.txt below), and
    # again when installed already: an earlier build may have AMX
    echo "This CPU has AMX: building llama.cpp without it (see scripts/setup.sh) ..."
    CFLAGS="$llama_flags" CXXFLAGS="$llama_flags" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
      .venv/bin/python -m pip install -q --no-cache-dir --force-reinstall --no-deps \
      "$(grep -m1 '^llama-cpp-python' requirements/llm.txt)"
  fi
  for req in requirements/*.txt; do
    [ "$req" = requirements/nodeps.txt ] && continue
    # CMAKE_BUILD_PARALLEL_LEVEL keeps source builds (llama-cpp-python) within a small machine.
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} .venv/bin/python -m pip install -q -r "$req"
  done
  # llama.cpp gets an OpenMP runtime apart from torch's (engines/llm/threads.py says why).
  .venv/bin/python scripts/private_openmp.py
  echo "$stamp" > "$stamp_file"
fi

if [ "$mode" = test ] && [ ! -x /usr/bin/chromium ]; then
  echo "Installing Chromium from Debian packages for the browser tests ..."
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi

# The PostgreSQL tests start a throwaway server (tests/pg_server.py) from Debian's binaries.
if [ "$mode" = test ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "Installing PostgreSQL from Debian packages for the PostgreSQL tests ..."
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
fi
