"""Downloading a model for the Models tab's import (studio/tasks/models.py): a file by URL, with
progress and resume, or a diffusers folder by hub id through huggingface_hub (which resumes on
its own). Only when the studio is online and downloads are allowed (`--allow-downloads`, or
GENSTUDIO_ALLOW_DOWNLOADS=1: a job that fetches URLs is opt-in, since whoever may queue jobs
could point it anywhere).

A URL download writes `.<name>.partial` beside its target; a canceled or broken download keeps
it, and the next import of the same URL asks the server for the rest (HTTP Range).
"""
from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from engines.base import CancelToken, EngineError, ParamError

ALLOW_ENV = "GENSTUDIO_ALLOW_DOWNLOADS"
SUFFIXES = (".safetensors", ".gguf")  # never pickles
CHUNK = 1 << 20
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def check_allowed(ctx, source: object) -> str:
    """The source's kind ("url" or "hub"), or ParamError saying why it cannot be fetched."""
    if not isinstance(source, str) or not source.strip():
        raise ParamError("source", "`source` must be a hub id (owner/name) or an http(s) URL")
    source = source.strip()
    if ctx.config.offline:
        raise ParamError("source", "the studio is offline (--offline or no hub reachable): hub "
                                   "ids and URLs cannot be downloaded; copy the files here and "
                                   "import them by path")
    allowed = (getattr(ctx.config, "allow_downloads", False)
               or os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes", "on"))
    if not allowed:
        raise ParamError("source", f"downloads are off in this studio; start it with "
                                   f"--allow-downloads (or {ALLOW_ENV}=1) to import by hub id "
                                   f"or URL")
    if source.startswith(("http://", "https://")):
        name = url_file_name(source)
        if not name.lower().endswith(SUFFIXES):
            raise ParamError("source", f"a URL must end in a {' or '.join(SUFFIXES)} file name, "
                                       f"got {name!r} (pickled files can run code)")
        return "url"
    if _HUB_ID.match(source):
        return "hub"
    raise ParamError("source", f"{source[:120]!r} is neither a hub id (owner/name) nor an "
                               f"http(s) URL")


def url_file_name(url: str) -> str:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name


def download_url(url: str, target: Path, on_bytes: Callable[[int, int | None], None],
                 cancel: CancelToken) -> Path:
    """Fetch `url` into `target`, resuming `.<name>.partial` when the server allows it."""
    partial = target.with_name(f".{target.name}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to fetch: the partial is whole
            partial.rename(target)
            return target
        raise EngineError(f"downloading {url_file_name(url)} failed: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise EngineError(f"downloading {url_file_name(url)} failed: {error}") from None
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length else None
        done = have if resumed else 0
        with open(partial, "ab" if resumed else "wb") as handle:
            while True:
                cancel.raise_if_cancelled()  # the partial stays: the next import resumes it
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                handle.write(chunk)
                done += len(chunk)
                on_bytes(done, total)
    if total is not None and done != total:
        raise EngineError(f"downloading {target.name} stopped at {done} of {total} bytes; "
                          f"import it again to resume")
    partial.rename(target)
    return target


def download_hub(repo_id: str, target: Path) -> Path:
    """A diffusers folder from the hub (safetensors and configs only) into `target`."""
    from huggingface_hub import snapshot_download

    partial = target.with_name(f".{target.name}.partial")
    try:
        snapshot_download(repo_id, local_dir=str(partial),
                          allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as error:  # the hub's errors are many; the user needs one sentence
        raise EngineError(f"downloading {repo_id} failed: {error}") from None
    if not (partial / "model_index.json").is_file():
        raise EngineError(f"{repo_id} is not a diffusers model (no model_index.json)")
    partial.rename(target)
    return target
