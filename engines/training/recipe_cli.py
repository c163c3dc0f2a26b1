"""What every long recipe's command line shares: where the result and the run go, resume,
threads and a time budget; and the run's log (printed and appended to <work>/log.txt)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable


def recipe_parser(doc: str, out: str, work: str, minutes: float,
                  resume_help: str = "continue from the last checkpoint") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--work", type=Path, default=Path(work))
    parser.add_argument("--resume", action="store_true", help=resume_help)
    parser.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget of this call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    return parser


def open_run(work: Path, threads: int) -> Callable[[str], None]:
    """Set torch's threads, make the run folder, and return its logger."""
    import torch

    torch.set_num_threads(threads)
    work.mkdir(parents=True, exist_ok=True)
    log_file = open(work / "log.txt", "a")

    def log(message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    return log
