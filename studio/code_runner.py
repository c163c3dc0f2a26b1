"""Run & fix sandbox: run a Python snippet in a subprocess and contain what it does.

Off unless the studio was started with --allow-code-execution (`check_code_execution`). A run:
  - starts studio/sandbox_launcher.py in a new session; it keeps every descendant in its tree
    (child subreaper), so on timeout the whole tree is stopped and killed, including children
    that called setsid() or double-forked;
  - limits CPU seconds, address space, file size, open files and the number of processes (a
    fork bomb gets at most `processes` more, then fork fails);
  - reads stdout and stderr as they come and keeps only the last OUTPUT_LIMIT characters; more
    than `output_mb` in all and the tree is killed (a flood never enters the studio's memory);
  - runs in an empty temporary folder with an empty environment (no tokens, no studio paths);
  - with Landlock (Linux 5.13+): reads only the system and Python folders, writes only its
    temporary folder (so not the data dir, the database, the repository or /proc/<studio>/environ),
    no TCP (ABI 4+), no signals to other processes (ABI 6+);
  - when the studio runs as root: as `nobody`, in a network namespace without network.

What it does NOT protect against (plainly): without Landlock (older kernels) the snippet reads
every file its user may read, the studio's data dir and database included, and uses the network
(unless the studio runs as root); with it, it still reads the system folders (/etc, /usr) and can
send UDP; it shares the kernel (a kernel exploit escapes) and may use its CPU, memory and disk
allowance. It is a guard for a local user's own code, not a jail for strangers.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engines.base import ParamError
from studio import sandbox_launcher

OUTPUT_LIMIT = 20_000  # characters of stdout / stderr kept
LAUNCHER = Path(sandbox_launcher.__file__).resolve()


class CodeExecutionDisabled(ParamError):
    """Run & fix asked for on a studio that does not allow it; the message says how to allow it."""

    def __init__(self, message: str) -> None:
        super().__init__("run_and_fix", message)


def check_code_execution(config) -> None:
    """Raise CodeExecutionDisabled unless this studio may run code for the request's sender."""
    if not getattr(config, "allow_code_execution", False):
        raise CodeExecutionDisabled(
            "`run_and_fix` is off on this studio: it runs code on this machine, so it needs the "
            "launch switch --allow-code-execution")
    reachable = bool(getattr(config, "share", False)) or not _loopback(getattr(config, "host", "127.0.0.1"))
    if reachable and not getattr(config, "auth", ()):
        raise CodeExecutionDisabled(
            "`run_and_fix` needs a login when the studio is reachable from other machines "
            "(start it with --auth or --auth-file)")


def _loopback(host: str) -> bool:
    from studio.security import is_loopback

    return is_loopback(host)


@dataclass(frozen=True)
class RunLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 512  # address space (RLIMIT_AS)
    file_mb: int = 10  # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 32  # processes (and threads) beyond what its user already has
    output_mb: float = 4.0  # stdout + stderr read in all before the run is stopped


@dataclass(frozen=True)
class RunResult:
    returncode: int | None  # None when it was killed for time or output
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    output_exceeded: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded

    def error_text(self) -> str:
        if self.output_exceeded:
            return f"The program printed more than the output limit and was stopped.\n{self.stderr[-2000:]}"
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
                "output_exceeded": self.output_exceeded, "duration_s": round(self.duration_s, 3),
                "stdout": self.stdout[-2000:], "stderr": self.stderr[-2000:]}


class _Tail:
    """The last `keep` bytes of a stream, and how many bytes went by."""

    def __init__(self, keep: int) -> None:
        self.keep, self.data, self.total = keep, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > 2 * self.keep:
            del self.data[:-self.keep]

    def text(self) -> str:
        return bytes(self.data[-self.keep:]).decode("utf-8", errors="replace")[-OUTPUT_LIMIT:]


def run_python(code: str, limits: RunLimits = RunLimits(), stdin: str = "") -> RunResult:
    """Run `code` with `python -I` (isolated: ignores PYTHON* variables and the user site)."""
    with tempfile.TemporaryDirectory(prefix="genstudio-run-") as folder:
        # 1. The script in a private folder (owned by `nobody` when the launcher will become it).
        script = os.path.join(folder, "main.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(code)
        if os.geteuid() == 0:
            for path in (folder, script):
                os.chown(path, sandbox_launcher.NOBODY, sandbox_launcher.NOBODY)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": folder, "TMPDIR": folder,
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
        settings = {"parent": os.getpid(), "cpu_s": limits.cpu_s, "memory": limits.memory_mb << 20,
                    "file_size": limits.file_mb << 20, "open_files": limits.open_files,
                    "processes": limits.processes}
        # 2. The launcher in its own session; Popen's start_new_session is safe with threads
        # (preexec_fn is not, and the studio has many).
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-I", str(LAUNCHER), json.dumps(settings), script], cwd=folder,
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        # 3. Output as it comes, until both pipes close, the time is up or the output is too much.
        stdout, stderr, reason = _collect(process, stdin, limits, started + limits.timeout_s)
        if reason is None:
            try:
                process.wait(timeout=max(0.0, started + limits.timeout_s - time.perf_counter()))
            except subprocess.TimeoutExpired:  # closed its pipes but kept running
                reason = "time"
        if reason is not None:
            sandbox_launcher.kill_tree(process.pid)  # the launcher and everything under it
            process.wait()
        return RunResult(None if reason else process.returncode, stdout.text(), stderr.text(),
                         reason == "time", time.perf_counter() - started, reason == "output")


def _collect(process: subprocess.Popen, stdin: str, limits: RunLimits,
             deadline: float) -> tuple[_Tail, _Tail, str | None]:
    """Read both pipes without ever holding more than a tail of each; returns (stdout, stderr,
    None | "time" | "output")."""
    keep = OUTPUT_LIMIT * 4  # bytes: enough for OUTPUT_LIMIT characters of any UTF-8
    out, err = _Tail(keep), _Tail(keep)
    tails = {process.stdout.fileno(): out, process.stderr.fileno(): err}
    budget = int(limits.output_mb * (1 << 20))
    _feed(process, stdin)
    reason = None
    with selectors.DefaultSelector() as selector:
        for fd in tails:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                reason = "time"
                break
            for key, _ in selector.select(min(remaining, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                tails[key.fd].add(chunk)
            if sum(t.total for t in tails.values()) > budget:
                reason = "output"
                break
    process.stdout.close()
    process.stderr.close()
    return out, err, reason


def _feed(process: subprocess.Popen, stdin: str) -> None:
    """Write stdin from a thread (a program that never reads must not block the studio)."""
    def write() -> None:
        try:
            if stdin:
                process.stdin.write(stdin.encode("utf-8"))
            process.stdin.close()
        except OSError:  # it exited or closed its stdin
            pass

    if stdin:
        threading.Thread(target=write, name="sandbox-stdin", daemon=True).start()
    else:
        write()
