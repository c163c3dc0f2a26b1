"""Run & fix sandbox: run a Python snippet in a subprocess, in an empty temporary folder, with a
wall-clock timeout, CPU-time, memory, file-size and open-file limits (resource.setrlimit), and a
minimal environment (no inherited variables, so no tokens or passwords leak in).

This limits accidents (endless loops, runaway memory), not a determined attacker: the process
still runs as the studio's user and can reach the network and the file system. Run & fix is
opt-in for that reason.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

OUTPUT_LIMIT = 20_000  # characters of stdout / stderr kept


@dataclass(frozen=True)
class RunLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 512  # address space (RLIMIT_AS)
    file_mb: int = 10  # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE


@dataclass(frozen=True)
class RunResult:
    returncode: int | None  # None when it was killed for time
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def error_text(self) -> str:
        if self.timed_out:
            return f"The program did not finish within the time limit.\n{self.stderr[-2000:]}"
        if self.returncode is not None and self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            return f"The program was killed by {name} (a CPU or memory limit).\n{self.stderr[-2000:]}"
        text = self.stderr[-4000:] or f"exit status {self.returncode}"
        if "EOFError" in text:
            text += "\n(The program runs without a keyboard: input() gets no data. Do not read input.)"
        return text

    def summary(self) -> dict:
        return {"returncode": self.returncode, "timed_out": self.timed_out,
                "duration_s": round(self.duration_s, 3), "stdout": self.stdout[-2000:],
                "stderr": self.stderr[-2000:]}


# Applies the limits, then becomes the snippet's interpreter. A launcher instead of
# Popen(preexec_fn=...), which is unsafe in a process with threads (the studio has many).
LAUNCHER = """
import os, resource, sys
cpu, memory, size, files = (int(v) for v in sys.argv[1:5])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
os.execv(sys.executable, [sys.executable, "-I", sys.argv[5]])
"""


def run_python(code: str, limits: RunLimits = RunLimits(), stdin: str = "") -> RunResult:
    """Run `code` with `python -I` (isolated: ignores PYTHON* variables and the user site)."""
    with tempfile.TemporaryDirectory(prefix="genstudio-run-") as folder:
        script = os.path.join(folder, "main.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(code)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": folder, "TMPDIR": folder,
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", LAUNCHER, str(limits.cpu_s), str(limits.memory_mb << 20),
             str(limits.file_mb << 20), str(limits.open_files), script],
            cwd=folder, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        try:
            stdout, stderr = process.communicate(stdin, timeout=limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its children too
            stdout, stderr = process.communicate()
            timed_out = True
        return RunResult(None if timed_out else process.returncode, stdout[-OUTPUT_LIMIT:],
                         stderr[-OUTPUT_LIMIT:], timed_out, time.perf_counter() - started)
