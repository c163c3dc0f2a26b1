#!/usr/bin/env python3
"""GenStudio launcher: `python launch.py [--host H] [--port P] [--share] [--auth user:pass] ...`

Serving beyond this machine (a non-loopback --host or --share) needs credentials: without them
the launcher refuses with one line, since the studio runs models, writes files and executes code
(Run & fix) for whoever reaches it.
"""
from __future__ import annotations

import os

# Before anything can import torch: passive OpenMP threads (spinning ones slow generation 10-50x
# on a small shared CPU) and no telemetry calls from a machine that may have no network.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import socket
import sys
from pathlib import Path

from studio.security import is_loopback  # one rule for the launcher and the server


def parse_auth(values: list[str], auth_file: str | None, env_value: str | None = None) -> tuple[tuple[str, str], ...]:
    """Logins from --auth, --auth-file (one user:password per line; blank lines and # comments
    skipped) and GENSTUDIO_AUTH (the same, one per line). A password may hold colons, commas and
    any UTF-8; an error names where the bad entry is, never the password."""
    entries = [(f"--auth #{n}", value) for n, value in enumerate(values, 1)]
    for n, line in enumerate((env_value or "").splitlines(), 1):
        entries.append((f"GENSTUDIO_AUTH line {n}", line))
    if auth_file:
        path = Path(auth_file)
        if not path.is_file():
            raise SystemExit(f"--auth-file {auth_file}: no such file")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            entries.append((f"--auth-file {auth_file} line {n}", line))
    pairs = []
    for where, entry in entries:
        if not entry.strip() or entry.lstrip().startswith("#"):
            continue
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            what = f"user {user!r} has no password" if sep and user else "expected user:password"
            raise SystemExit(f"{where}: {what}")
        pairs.append((user, password))
    return tuple(pairs)


def free_port(host: str, start: int, tries: int = 100) -> int:
    """The first port from `start` on that nothing listens on (7860 taken -> 7861 ...)."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            try:
                sock.bind((host, port))
                return port
            except OSError:
                continue
    raise SystemExit(f"no free port in {start}..{start + tries - 1} on {host}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch.py", description="Start the GenStudio web app.")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port, or the next free one (default 7860)")
    parser.add_argument("--data-dir", default="data", help="database, outputs, user models (default ./data)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (needs --auth)")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="a login for the UI and the APIs; repeatable")
    parser.add_argument("--auth-file", help="file of user:password logins, one per line, # comments "
                             "(or set GENSTUDIO_AUTH); keeps passwords out of the process list")
    parser.add_argument("--offline", action="store_true", help="never contact a model hub")
    parser.add_argument("--memory-budget-gb", type=float, default=8.0,
                        help="unload least recently used models above this (default 8)")
    parser.add_argument("--no-queue-worker", action="store_true",
                        help="do not run queued jobs in this process")
    parser.add_argument("--allow-code-execution", action="store_true",
                        help="let the Code tab's run & fix run model-written Python on this machine "
                             "(off by default; beyond loopback only logged-in users)")
    parser.add_argument("--allow-downloads", action="store_true",
                        help="let the Models tab import by hub id or URL (a job that fetches "
                             "what it is given: off by default; GENSTUDIO_ALLOW_DOWNLOADS=1 too)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="another Host name to answer, e.g. a reverse proxy's; repeatable")
    parser.add_argument("--max-request-mb", type=float, default=64.0,
                        help="largest HTTP request body in MB (default 64)")
    parser.add_argument("--database", metavar="URL",
                        help="SQLAlchemy URL of the database (default: SQLite in the data dir); "
                             "postgresql+psycopg://user:pass@host/db shares one queue and gallery "
                             "between studios and machines")
    parser.add_argument("--storage", metavar="PATH",
                        help="where gallery files and thumbnails live (default: the data dir); "
                             "with many machines, a path every one of them mounts")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run queued jobs on Ray actors of this cluster (auto, 127.0.0.1:6379) "
                             "instead of in this process; needs a PostgreSQL --database")
    parser.add_argument("--ray-workers", type=int, default=0, metavar="N",
                        help="with --ray: N CPU actors when the cluster has no GPUs "
                             "(default: one actor per GPU)")
    parser.add_argument("--autolaunch", action="store_true",
                        help="open the studio in your web browser once it serves (when there is one)")
    parser.add_argument("--no-browser", action="store_true",
                        help="never open a browser (wins over --autolaunch, which ./run.sh passes)")
    parser.add_argument("--openvino", choices=["f32", "bf16"],
                        help="CPU: run the diffusion UNet on OpenVINO; bf16 about halves the time "
                             "on AVX-512 BF16 CPUs (slightly different images), f32 keeps them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    auth = parse_auth(args.auth, args.auth_file, os.environ.get("GENSTUDIO_AUTH"))
    if (args.share or not is_loopback(args.host)) and not auth:
        where = "a share link" if args.share else f"host {args.host}"
        print(f"Refusing to serve {where} without a login: add --auth user:password "
              "(or serve on 127.0.0.1).", file=sys.stderr)
        raise SystemExit(2)
    if args.ray and not (args.database or "").startswith(("postgresql", "postgres:")):
        print("--ray runs jobs on other machines, which cannot open this machine's SQLite file: "
              "add --database postgresql+psycopg://user:pass@host/db (docs/scale-out.md).",
              file=sys.stderr)
        raise SystemExit(2)
    if args.ray_workers < 0:
        raise SystemExit(f"--ray-workers must be 0 or more, got {args.ray_workers}")
    if args.openvino:
        os.environ["GENSTUDIO_OPENVINO"] = args.openvino  # read by RuntimeOptions.from_env
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"

    from studio.app import serve
    from studio.config import StudioConfig

    config = StudioConfig(
        data_dir=Path(args.data_dir).expanduser().resolve(), host=args.host,
        port=free_port(args.host, args.port), share=args.share, auth=auth, device=args.device,
        offline=args.offline, memory_budget_gb=args.memory_budget_gb,
        allow_code_execution=args.allow_code_execution, allow_downloads=args.allow_downloads,
        allowed_hosts=tuple(args.allowed_host),
        max_request_mb=args.max_request_mb,
        queue_worker=not args.no_queue_worker, database=args.database,
        storage_dir=Path(args.storage).expanduser().resolve() if args.storage else None,
        ray_address=args.ray, ray_workers=args.ray_workers,
        open_browser=args.autolaunch and not args.no_browser)
    serve(config)


if __name__ == "__main__":
    main()
