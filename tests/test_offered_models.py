"""A request may name only a model the studio offers (studio/models.py): refused at enqueue,
with the same words whether or not a file exists at the path."""
from __future__ import annotations

import shutil

import pytest

from engines.base import ParamError
from studio.models import check_diffusion_model, check_llm_model
from studio.tasks import validate_task


def test_diffusion_models_from_the_models_folders_only(ctx, tmp_path):
    from engines.diffusion.loading import ALIASES, DEFAULT_MODEL

    check_diffusion_model(ctx, DEFAULT_MODEL)
    inside = ctx.config.models_dir / "Stable-diffusion" / "tiny"
    shutil.copytree(ALIASES[DEFAULT_MODEL], inside)
    check_diffusion_model(ctx, str(inside))
    outside = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(ALIASES[DEFAULT_MODEL], outside)
    messages = set()
    for bad in (str(outside), str(inside / ".." / ".." / ".." / "elsewhere" / "tiny"),
                "../../../../etc/passwd", "/etc/passwd", "/no/such/model.safetensors",
                "someone/not-cached-model"):
        with pytest.raises(ParamError) as error:
            check_diffusion_model(ctx, bad)
        assert error.value.field == "model"
        messages.add(str(error.value).replace(repr(bad), "<name>"))
    assert len(messages) == 1  # an existing file and a missing one read alike


def test_language_models_from_the_catalogue_only(ctx, tmp_path):
    from engines.llm.catalog import EMBEDDED_ID, embedded_gguf

    check_llm_model(ctx, EMBEDDED_ID)
    ctx.config.models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(embedded_gguf(), ctx.config.models_dir / "mine.gguf")
    check_llm_model(ctx, str(ctx.config.models_dir / "mine.gguf"))
    shutil.copy(embedded_gguf(), tmp_path / "outside.gguf")
    for bad in (str(tmp_path / "outside.gguf"), "/etc/passwd", "../../../../etc/passwd"):
        with pytest.raises(ParamError):
            check_llm_model(ctx, bad)


def test_tasks_refuse_other_models_at_validation(ctx):
    with pytest.raises(ValueError, match="not one of this studio's models"):
        validate_task(ctx, "txt2img", {"prompt": "x", "model": "/etc/passwd"})
    with pytest.raises(ValueError, match="not one of this studio's models"):
        validate_task(ctx, "chat", {"model": "/etc/passwd",
                                    "messages": [{"role": "user", "content": "hi"}]})
