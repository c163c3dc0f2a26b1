"""Model catalogue: ids resolve to sources or fail with the id named; the models folder and the
HF cache are listed; the Qwen extra is assembled once, its SHA-256 recorded and verified."""
from __future__ import annotations

import json

import pytest

from engines.llm import catalog as llm_catalog
from engines.llm.catalog import (EMBEDDED_ID, assemble_qwen_coder, embedded_gguf, list_models,
                                 resolve, verify_sha256)


def test_models_folder_and_hf_cache_are_listed(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.gguf").write_bytes(b"GGUF" + b"\0" * 16)
    folder = models / "my-llm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (models / "notes.txt").write_text("not a model")
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--cached-llm" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    (cache / "models--org--cached-llm" / "refs").mkdir()
    (cache / "models--org--cached-llm" / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ids = {m.model_id: m for m in list_models((models,))}
    assert str(models / "tiny.gguf") in ids and ids[str(models / "tiny.gguf")].format == "gguf"
    assert str(folder) in ids and ids[str(folder)].format == "transformers"
    assert "org/cached-llm" in ids and ids["org/cached-llm"].path == snapshot
    assert not any("notes" in i for i in ids)
    assert resolve("org/cached-llm").path == snapshot
    if embedded_gguf():
        assert next(iter(ids)) == EMBEDDED_ID  # embedded first


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        resolve(str(tmp_path))


def test_qwen_extra_is_assembled_once_and_verified(tmp_path, monkeypatch):
    parts = []
    for index in range(6):
        part = tmp_path / f"part{index + 1:02d}.bin"
        part.write_bytes((b"GGUF" if index == 0 else b"") + bytes([index]) * 1000)
        parts.append(part)
    monkeypatch.setattr(llm_catalog, "qwen_coder_parts", lambda: parts)
    monkeypatch.setenv("GENSTUDIO_MODELS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="refusing"):  # not the digest of the known release
        assemble_qwen_coder()
    assert not list((tmp_path / "cache").iterdir())
    monkeypatch.setattr(llm_catalog, "QWEN_CODER_SHA256", None)
    path = assemble_qwen_coder()
    assert path.read_bytes() == b"".join(p.read_bytes() for p in parts)
    source = resolve("qwen2.5-coder-0.5b-instruct")
    assert source.sha256 == llm_catalog.sha256_of(path) and source.format == "gguf"
    verify_sha256(path, source.sha256)
    with path.open("ab") as handle:  # the file changes after assembly: refused on load
        handle.write(b"tampered")
    with pytest.raises(ValueError, match="SHA-256"):
        verify_sha256(path, source.sha256)


def test_qwen_extra_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(llm_catalog, "qwen_coder_parts", lambda: None)
    monkeypatch.setenv("GENSTUDIO_MODELS_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="opt-in extra"):
        resolve("qwen2.5-coder-0.5b-instruct")


def test_qwen_15b_extra_records_its_first_digest_and_refuses_changes(tmp_path, monkeypatch):
    parts = []
    for index in range(22):
        part = tmp_path / f"part{index + 1:02d}.bin"
        part.write_bytes((b"GGUF" if index == 0 else b"") + bytes([index]) * 100)
        parts.append(part)
    monkeypatch.setenv("GENSTUDIO_MODELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(llm_catalog, "qwen_coder_15_parts", lambda: None)
    with pytest.raises(ValueError, match="install-qwen-1.5b.sh"):
        resolve("qwen2.5-coder-1.5b-instruct")
    monkeypatch.setattr(llm_catalog, "qwen_coder_15_parts", lambda: parts)
    assert "qwen2.5-coder-1.5b-instruct" in [m.model_id for m in list_models()]
    source = resolve("qwen2.5-coder-1.5b-instruct")
    assert source.path.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert source.sha256 == llm_catalog.sha256_of(source.path)
    with source.path.open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ValueError, match="SHA-256"):
        verify_sha256(source.path, source.sha256)
