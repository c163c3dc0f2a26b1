"""Can this llama.cpp build run on this CPU? Asked once per model file, in a child process.

Why: llama-cpp-python compiles llama.cpp for the CPU it is built on (-march=native). A build that
uses instructions the running machine cannot execute (AMX that a virtual machine's kernel has
not enabled, seen here and in CI; a wheel copied from another CPU) does not raise: it kills the
process with SIGSEGV or SIGILL on the first prompt, and the whole studio with it, jobs and open
pages included. A child process takes that crash instead, and the engine then runs the model on
transformers (slower, the same GGUF file) and says why.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120  # a loaded 2-core machine; loading and 2 evaluations take ~1 s when idle

# Loads the file with the engine's batch size and evaluates a batch and then one token: the two
# paths a prompt and a reply take through llama.cpp's matrix kernels.
PROBE_CODE = """
import sys
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_batch=int(sys.argv[2]), n_threads=1,
                      n_threads_batch=2, verbose=False)
tokens = llm.tokenize(b"The studio checks that this build runs here.", add_bos=True)[:12]
llm.eval(tokens)
llm.eval(tokens[:1])
print("ok")
"""

_verdicts: dict[tuple[str, int], str | None] = {}


def llama_cpp_crash(path: Path, batch: int) -> str | None:
    """None when llama.cpp loads `path` and evaluates tokens in a child process without being
    killed by a signal; else why not, for the log and the error. A child that exits with an
    error (a bad file) counts as running: loading it in process gives that error by name."""
    key = (str(path), path.stat().st_mtime_ns)
    if key in _verdicts:
        return _verdicts[key]
    try:
        child = subprocess.run([sys.executable, "-c", PROBE_CODE, str(path), str(batch)],
                               capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                               env={**os.environ, "OMP_NUM_THREADS": "2"})
        verdict = None
        if child.returncode < 0:
            name = signal.Signals(-child.returncode).name
            verdict = (f"llama.cpp was killed by {name} evaluating {path.name} in a test process (a "
                       "build for instructions this CPU cannot run, or a damaged file; to rebuild "
                       "llama.cpp for this machine: scripts/setup.sh)")
    except subprocess.TimeoutExpired:
        verdict = None  # slow is not broken: the engine loads it and the user sees the speed
        log.warning("llama.cpp probe of %s took over %d s; using llama.cpp", path.name, PROBE_TIMEOUT_S)
    _verdicts[key] = verdict
    return verdict
