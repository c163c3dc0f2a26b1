"""The first process of a run & fix sandbox, and the process-tree helpers the studio kills with.

Run as `python -I sandbox_launcher.py <json settings> <script>` by studio/code_runner.py, in a
new session. Standard library only: it must not import the studio. In order, it
  1. becomes a "child subreaper" (prctl): every process the snippet starts, even one that
     called setsid() and whose parent exited, stays a descendant of this launcher, so the tree
     can always be found and killed;
  2. dies with the studio (PR_SET_PDEATHSIG);
  3. as root only: enters a fresh network namespace (no network at all) and becomes `nobody`,
     who cannot write the studio's files and to whom the process limit applies (root ignores
     RLIMIT_NPROC). `nobody` needs an interpreter it may run: the studio's own, else the
     system's python3; with neither, it stays root without any capability (so the process
     limit applies, but root's files stay writable);
  4. forbids gaining privileges through setuid programs (PR_SET_NO_NEW_PRIVS);
  5. sets the limits: CPU seconds, address space, file size, open files, no core dumps, and at
     most N more processes for the user than it has now (RLIMIT_NPROC counts the user's tasks);
  6. runs the snippet, waits for it (adopting orphans as they come), kills whatever it left
     running, and exits as the snippet did (the same code or the same signal).
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000
NOBODY = 65534


# ------------------------------------------------------------------ the process tree
def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (a snapshot)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def descendants(root: int) -> list[int]:
    children, found, todo = _children_map(), [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(root: int, include_root: bool = True, rounds: int = 50) -> int:
    """Stop every descendant of `root` (a stopped process cannot fork), rescan until no new one
    appears, then SIGKILL them all. Returns how many processes were killed."""
    stopped: set[int] = set()
    for _ in range(rounds):
        new = [pid for pid in descendants(root) if pid not in stopped]
        if include_root and root not in stopped:
            new.append(root)
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
            stopped.add(pid)
    for pid in stopped:
        _signal(pid, signal.SIGKILL)
    return len(stopped)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def user_tasks(uid: int) -> int:
    """Tasks (processes and their threads) of a real uid: what RLIMIT_NPROC is compared with."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as handle:
                status = handle.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


# ------------------------------------------------------------------ the launcher
def _prctl(libc, option: int, value: int) -> bool:
    return libc.prctl(option, value, 0, 0, 0) == 0


def _world_runnable(path: str) -> bool:
    """Whether any user may run this interpreter: every folder on the way (through symlinks)
    searchable by others, the file readable and executable by them."""
    for candidate in {os.path.abspath(path), os.path.realpath(path)}:
        try:
            if os.stat(candidate).st_mode & 0o005 != 0o005:
                return False
            folder = os.path.dirname(candidate)
            while True:
                if not os.stat(folder).st_mode & 0o001:
                    return False
                if folder == os.path.dirname(folder):
                    break
                folder = os.path.dirname(folder)
        except OSError:
            return False
    return True


def _confine(settings: dict) -> str:
    """Everything before the snippet runs; returns the interpreter to run it with."""
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, PR_SET_CHILD_SUBREAPER, 1)
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != settings["parent"]:  # the studio is already gone
        os._exit(70)
    uid, interpreter = os.getuid(), sys.executable
    if os.geteuid() == 0:
        libc.unshare(CLONE_NEWNET)  # best effort: only loopback, and it is down
        runnable = [p for p in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3")
                    if _world_runnable(p)]
        if runnable:
            interpreter, uid = runnable[0], NOBODY
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        else:  # no capabilities after exec: RLIMIT_NPROC applies to root's tasks then
            for capability in range(64):
                _prctl(libc, PR_CAPBSET_DROP, capability)
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    limits = ((resource.RLIMIT_CPU, settings["cpu_s"], settings["cpu_s"] + 1),
              (resource.RLIMIT_AS, settings["memory"], settings["memory"]),
              (resource.RLIMIT_FSIZE, settings["file_size"], settings["file_size"]),
              (resource.RLIMIT_NOFILE, settings["open_files"], settings["open_files"]),
              (resource.RLIMIT_CORE, 0, 0))
    for kind, soft, hard in limits:
        resource.setrlimit(kind, (soft, hard))
    processes = user_tasks(uid) + settings["processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    return interpreter


def main(argv: list[str]) -> None:
    settings, script = json.loads(argv[1]), argv[2]
    interpreter = _confine(settings)
    child = os.fork()
    if child == 0:
        try:
            os.execv(interpreter, [interpreter, "-I", script])
        except OSError as error:
            os.write(2, f"sandbox: cannot start {interpreter}: {error}\n".encode())
        os._exit(127)
    while True:  # reap adopted orphans until the snippet itself ends
        pid, status = os.wait()
        if pid == child:
            break
    kill_tree(os.getpid(), include_root=False)  # what it left running in the background
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.01)
        except ChildProcessError:
            break
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL and SIGSTOP keep their default anyway
            pass
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    main(sys.argv)
