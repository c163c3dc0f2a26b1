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
  4b. in the snippet's process only, where the kernel has Landlock (Linux 5.13+): file access
     limited to the system and Python folders (read) and its temporary folder (read, write);
     so not the studio's data dir, database or repository, whichever user runs it. With
     Landlock ABI 4+ no TCP either; with ABI 6+ no signals to processes outside the sandbox;
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
    if not os.path.isdir("/proc"):  # not Linux: only the process group can be found (killpg)
        return children
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
    if include_root:  # its process group too: all there is to find where /proc is missing
        try:
            os.killpg(root, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(stopped)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def user_tasks(uid: int) -> int:
    """Tasks (processes and their threads) of a real uid: what RLIMIT_NPROC is compared with."""
    total = 0
    if not os.path.isdir("/proc"):
        return 0
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


# ------------------------------------------------------------------ Landlock
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
FS_READ = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir
FS_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_TCP = (1 << 0) | (1 << 1)  # bind, connect
SCOPES = (1 << 0) | (1 << 1)  # abstract unix sockets, signals


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 without Landlock."""
    if not sys.platform.startswith("linux"):  # 444 is another system call elsewhere
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, version)


def readable_roots() -> list[str]:
    """What Python and ordinary programs need to read: system folders and this interpreter's."""
    roots = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt/conda"]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}:
        roots.append(prefix)
    return [r for r in dict.fromkeys(roots) if os.path.exists(r)]


def _landlock(writable: str) -> bool:
    """Restrict this process and its future children; False where the kernel cannot."""
    abi = landlock_abi()
    if abi < 1:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fs_all = FS_ALL_BY_ABI[max(k for k in FS_ALL_BY_ABI if k <= abi)]
    attr = _RulesetAttr(fs_all, NET_TCP if abi >= 4 else 0, SCOPES if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    rules = [(path, FS_READ) for path in readable_roots()]
    rules += [("/dev/null", FS_READ | (1 << 1)), ("/dev/zero", FS_READ), ("/dev/urandom", FS_READ),
              ("/dev/random", FS_READ), ("/proc/self", FS_READ), (writable, fs_all)]
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            # a file may only be given file rights (no read-dir, no make-...)
            if not os.path.isdir(path):
                access &= (1 << 0) | (1 << 1) | (1 << 2) | ((1 << 14) if abi >= 3 else 0)
            rule = _PathBeneath(access & fs_all, fd)
            libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
            os.close(fd)
        return libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    finally:
        os.close(ruleset)


# ------------------------------------------------------------------ the launcher
def _prctl(libc, option: int, value: int) -> bool:
    prctl = getattr(libc, "prctl", None)  # Linux only; elsewhere the other limits still apply
    return prctl is not None and prctl(option, value, 0, 0, 0) == 0


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
        if hasattr(libc, "unshare"):
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
            _landlock(os.path.dirname(script))
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
