"""How many CPU threads llama.cpp gets, and its OpenMP runtime of its own.

The studio sets OMP_WAIT_POLICY=PASSIVE before torch loads: on a shared 2-core machine torch's
spinning threads otherwise slow everything else 10-50x. llama.cpp uses OpenMP too, and under
PASSIVE its 2-thread decoding is no faster than one thread (measured on an idle machine: 81 tok/s
vs 129 for a raw process in a clean environment), because a small model's token step is ~300
operations that each end in a barrier, and a sleeping thread wakes up too slowly for that.

So llama.cpp gets a private copy of the OpenMP runtime (scripts/private_openmp.py renames it at
install time), started without PASSIVE: its threads spin at barriers, as in a raw process, while
torch's runtime keeps PASSIVE. Spinning is only good while nobody else wants the cores (two
spinning threads on two busy cores collapse to ~1-3 tok/s), so `AdaptiveThreads` looks at what
other processes (and training jobs in this one, `lane_job`) use and gives llama.cpp every core when they are idle and one thread (no barrier
to wait at) when they are not. Thread counts do not change llama.cpp's results (each output is
computed by one thread), so seeds still reproduce.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

PRIVATE_RUNTIME = "libgomp-llama.so.1"  # written next to llama.cpp's libraries by the installer
SMALL_MODEL_BYTES = 300 << 20  # GGUF files under this decode on one thread on a busy machine
RECHECK_SECONDS = 0.25  # how often decoding looks at the machine's load again
RECENT_SECONDS = 1.0  # a prompt right after a reply (an agent's next call) trusts the load since


def cpu_threads() -> int:
    """Threads for llama.cpp and torch: GENSTUDIO_LLM_THREADS, else the CPUs we may use."""
    if os.environ.get("GENSTUDIO_LLM_THREADS"):
        return max(1, int(os.environ["GENSTUDIO_LLM_THREADS"]))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def fixed_decode_threads() -> int | None:
    """GENSTUDIO_LLM_DECODE_THREADS, when the user fixed the number."""
    value = os.environ.get("GENSTUDIO_LLM_DECODE_THREADS")
    return max(1, int(value)) if value else None


def decode_threads(model_bytes: int) -> int:
    """Decode threads on a busy machine (and everywhere without the private runtime): one for
    small models, whose step is too little work to share (measured on 2 busy cores, SmolLM2-135M:
    1 thread 32-35 tok/s, 2 threads 18 under PASSIVE, 2.4 spinning; docs/llm.md), else all."""
    fixed = fixed_decode_threads()
    if fixed:
        return fixed
    return 1 if model_bytes < SMALL_MODEL_BYTES else cpu_threads()


def _llama_lib_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    return Path(spec.origin).parent / "lib" if spec and spec.origin else None


def private_runtime() -> bool:
    """True when llama.cpp links an OpenMP runtime of its own (Linux, after the installer)."""
    lib = _llama_lib_dir()
    return bool(lib and (lib / PRIVATE_RUNTIME).is_file())


def import_llama_cpp():
    """Import llama_cpp, starting its private OpenMP runtime without PASSIVE (the runtime reads
    the environment once, when it loads). Without a private runtime the environment is left
    alone: the runtime is torch's, and un-setting PASSIVE there would make torch spin."""
    if "llama_cpp" in sys.modules or not private_runtime():
        import llama_cpp

        return llama_cpp
    saved = {k: os.environ.pop(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    try:
        import llama_cpp
    finally:
        os.environ.update(saved)
    return llama_cpp


class OtherLoad:
    """CPU used by other processes on our CPUs, from /proc/stat minus this process's own CPU
    time (Linux; None elsewhere). Work of this process's own beside the language model (a
    training job on its lane) is not seen here: it is announced with `lane_job()`."""

    def __init__(self) -> None:
        self._cpus = {f"cpu{i}" for i in (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ())}
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as stat:
                busy = 0
                for line in stat:
                    fields = line.split()
                    if fields and fields[0] in self._cpus:
                        values = [int(v) for v in fields[1:9]]
                        busy += sum(values) - values[3] - values[4]  # all but idle and iowait
        except (OSError, ValueError):
            return None
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()

    def since_last(self) -> tuple[float, float] | None:
        """(seconds, cores busy with other processes) since the last call."""
        now, last = self._sample(), self._last
        if now is None or last is None:
            return None
        self._last = now
        seconds = now[0] - last[0]
        if seconds <= 0:
            return None
        others = (now[1] - last[1]) - max(0.0, now[2] - last[2])  # everyone's CPU minus ours
        return seconds, max(0.0, others) / seconds


def others_running_now() -> int | None:
    """Runnable threads of other processes right now (/proc/loadavg counts every runnable
    thread; ours, a spinning OpenMP worker included, are taken off)."""
    try:
        with open("/proc/loadavg") as loadavg:
            running = int(loadavg.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - _own_running_threads())


def _own_running_threads() -> int:
    count = 0
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/stat") as stat:
                count += stat.read().rsplit(")", 1)[1].split()[0] == "R"
    except (OSError, IndexError):
        return 1
    return max(1, count)


_lane_jobs = 0  # jobs running on this process's other lanes (training), see lane_job()
_lane_lock = threading.Lock()


@contextmanager
def lane_job():
    """Wraps a job that runs beside generation in this process (a training lane): while it
    runs, llama.cpp decodes as on a busy machine, since /proc/stat cannot tell its CPU time
    from the language model's."""
    global _lane_jobs
    with _lane_lock:
        _lane_jobs += 1
    try:
        yield
    finally:
        with _lane_lock:
            _lane_jobs -= 1


class AdaptiveThreads:
    """Sets a llama.cpp context's thread counts from the machine's load, before a prompt and
    every RECHECK_SECONDS while decoding. Fixed counts when adapting cannot help: no private
    runtime, GENSTUDIO_LLM_DECODE_THREADS set, one CPU, or no /proc."""

    def __init__(self, llama_module, context, model_bytes: int) -> None:
        self._lib, self._ctx = llama_module, context
        self._busy = decode_threads(model_bytes), cpu_threads()  # (decode, prompt) when busy
        # While decoding on a busy machine, batches are a few tokens (a constrained reply's
        # forced text): as little work per barrier as one token, so as few threads (measured:
        # 97 ms per forced chunk on 2 spinning threads vs ~20 ms on one, 2 busy cores).
        self._decoding = (self._busy[0], self._busy[0])
        self._all = cpu_threads()
        self.enabled = (private_runtime() and fixed_decode_threads() is None and self._all > 1
                        and others_running_now() is not None)
        self._load = OtherLoad() if self.enabled else None
        self._checked, self._window_open = 0.0, False
        self.current: tuple[int, int] = self._busy

    def _set(self, threads: tuple[int, int]) -> None:
        if threads != self.current:
            self._lib.llama_set_n_threads(self._ctx, threads[0], threads[1])
            self.current = threads

    def before_prompt(self) -> None:
        """Every core when no other process is runnable now, else the busy-machine counts."""
        if not self.enabled:
            return
        self._window_open = False  # the first decoded token opens it (tick)
        idle = others_running_now() == 0 and _lane_jobs == 0
        if idle:  # nothing runnable this instant; and since the last reply, if it just ended?
            # A busy machine is often idle for an instant, and 2 spinning threads on busy cores
            # are 10x slower until the first check while decoding (RECHECK_SECONDS). A longer
            # gap (a user typing; another program's short burst) says little about now.
            window = self._load.since_last()
            if window is not None and 0.05 <= window[0] <= RECENT_SECONDS:
                idle = not self._others_busy(window[1])
        self._set((self._all, self._all) if idle else self._busy)

    def _others_busy(self, others: float) -> bool:
        """Other processes used half a core or more (of the time measured)."""
        return self._all - others - (1 if _lane_jobs else 0) <= self._all - 0.5

    def tick(self) -> None:
        """Called per decoded token: every RECHECK_SECONDS, the cores others used meanwhile.
        The window opens at the first token, so prompt evaluation (on every thread) is not in
        it."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not self._window_open:
            self._load.since_last()
            self._window_open, self._checked = True, now
            if self.current == self._busy:
                self._set(self._decoding)
            return
        if now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        window = self._load.since_last()
        if window is None:
            return
        self._set(self._decoding if self._others_busy(window[1]) else (self._all, self._all))
