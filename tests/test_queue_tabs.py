""""Add to queue" on the Chat, Code and Style transfer tabs: each queues one valid job of its task
with the tab's values, and bad input (empty message, empty description, no photo) or a studio
without a queue queues nothing and says why. Handlers called directly; no model is loaded."""
from __future__ import annotations

import pytest
from PIL import Image

from studio.jobs.queue import JobQueue

# The chat tab's model, system prompt and sampling controls, in its input order.
CHAT_SAMPLING = ("smollm2-135m-instruct", "Be brief.", 0.5, 0.8, 20, 1.2, 64, 7)


@pytest.fixture
def queue(ctx):
    from studio.jobs.runner import Runner

    ctx.queue = JobQueue(ctx)  # no worker: jobs stay pending, which is all these tests need
    ctx.runner = Runner(ctx.queue)
    yield ctx.queue
    ctx.queue = ctx.runner = None


def jobs(queue) -> list:
    return queue.list()


def test_chat_queues_the_conversation_and_the_message(ctx, queue):
    from studio.ui.chat import queue_chat

    history = [{"role": "user", "content": "Hi", "item_id": None},
               {"role": "assistant", "content": "Hello!", "item_id": 3}]
    status = queue_chat(ctx, "Name a fruit.", history, *CHAT_SAMPLING)
    [job] = jobs(queue)
    assert status.startswith(f"Queued job #{job.id}") and "gallery" in status
    assert job.task == "chat" and job.status == "pending" and job.label == "Name a fruit."
    assert job.params == {
        "model": "smollm2-135m-instruct", "system_prompt": "Be brief.", "temperature": 0.5,
        "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.2, "max_new_tokens": 64, "seed": 7,
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                     {"role": "user", "content": "Name a fruit."}]}


def test_chat_refuses_an_empty_message_and_a_bad_value(ctx, queue):
    from studio.ui.chat import queue_chat

    with pytest.warns(UserWarning, match="message is empty"):
        status = queue_chat(ctx, "   ", [], *CHAT_SAMPLING)
    assert "message is empty" in status
    with pytest.warns(UserWarning, match="temperature"):
        status = queue_chat(ctx, "hi", [], "smollm2-135m-instruct", "", 9.0, 0.9, 40, 1.1, 64, -1)
    assert status.startswith("⚠️ Not queued") and "temperature" in status
    assert jobs(queue) == []


def test_no_queue_in_the_studio_is_said_plainly(ctx):
    from studio.ui.chat import queue_chat

    assert ctx.queue is None
    with pytest.warns(UserWarning, match="queue is not running"):
        assert "queue is not running" in queue_chat(ctx, "hi", [], *CHAT_SAMPLING)


def test_a_missing_engine_is_said_plainly(ctx, queue, monkeypatch):
    from studio.ui.code import queue_code

    monkeypatch.setattr(ctx.engines, "kinds", lambda: ["diffusion"])
    with pytest.warns(UserWarning, match="needs the 'llm' engine"):
        assert "needs the 'llm' engine" in queue_code(ctx, *code_controls())
    assert jobs(queue) == []


def code_controls(**changes):
    values = dict(mode="write", lang="python", model_id="smollm2-135m-instruct",
                  desc="add two numbers", code="", err="", pre="", suf="", fix=True, max_rounds=2,
                  temp=0.2, p=0.95, k=40, rep=1.05, max_tokens=256, seed_value=-1)
    values.update(changes)
    return list(values.values())


def test_code_queues_mode_fields_sampling_and_run_and_fix(ctx, queue):
    from studio.ui.code import queue_code

    status = queue_code(ctx, *code_controls())
    [job] = jobs(queue)
    assert status.startswith(f"Queued job #{job.id}")
    assert job.task == "code" and job.label == "add two numbers"
    assert job.params == {
        "model": "smollm2-135m-instruct", "mode": "write", "language": "python",
        "description": "add two numbers", "run_and_fix": True, "rounds": 2, "temperature": 0.2,
        "top_p": 0.95, "top_k": 40, "repetition_penalty": 1.05, "max_new_tokens": 256, "seed": None}


def test_code_queues_only_the_fields_of_its_mode(ctx, queue):
    from studio.ui.code import queue_code

    queue_code(ctx, *code_controls(mode="fix", code="print(1/0)", err="ZeroDivisionError"))
    [job] = jobs(queue)
    assert (job.params["code"], job.params["error"]) == ("print(1/0)", "ZeroDivisionError")
    assert "description" not in job.params and job.label == "print(1/0)"


@pytest.mark.parametrize("changes,message", [
    ({"desc": "  "}, "`description` is empty"),
    ({"mode": "explain", "fix": False}, "`code` is empty"),
    ({"lang": "go"}, "run & fix runs Python only"),
])
def test_code_refuses_bad_input(ctx, queue, changes, message):
    from studio.ui.code import queue_code

    with pytest.warns(UserWarning, match=message):
        status = queue_code(ctx, *code_controls(**changes))
    assert message in status and jobs(queue) == []


# ---------------------------------------------------------------- style
STYLE = "ink"  # an embedded style (assets/styles/ink): validation reads its folder, no weights


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (200, 80, 20)).save(path)
    return str(path)


def test_style_upload_is_saved_once_and_queued_by_id(ctx, queue, photo):
    from studio.ui.style import queue_style

    status, parent = queue_style(ctx, photo, None, STYLE, 0.8, "256", None)
    [job] = jobs(queue)
    assert status.startswith(f"Queued job #{job.id}")
    upload = ctx.gallery.get(parent)
    assert upload.task == "upload" and (upload.width, upload.height) == (48, 40)
    assert job.task == "style" and job.params == {"style": STYLE, "strength": 0.8,
                                                  "output_side": 256, "image_id": parent}
    # Queued again (the tab now holds the item as the photo's parent): no second copy.
    status, again = queue_style(ctx, photo, parent, STYLE, 1.0, "Same as input", None)
    assert status.startswith("Queued job #") and again is not None and not isinstance(again, int)
    assert jobs(queue)[-1].params == {"style": STYLE, "strength": 1.0, "output_side": None,
                                      "image_id": parent}
    assert ctx.gallery.query().total == 1


def test_style_from_the_gallery_goes_by_its_id(ctx, queue):
    from studio.ui.style import queue_style

    item = ctx.gallery.add_image(Image.new("RGB", (32, 32)), task="txt2img", engine="diffusion",
                                 prompt="a cat")
    status, _ = queue_style(ctx, str(item.file_path), item.id, STYLE, 1.0, "512", None)
    assert status.startswith("Queued job #")
    assert jobs(queue)[0].params["image_id"] == item.id and ctx.gallery.query().total == 1


def test_style_refuses_no_photo_and_bad_values_saving_nothing(ctx, queue, photo):
    from studio.ui.style import queue_style

    with pytest.warns(UserWarning, match="Upload a photo first"):
        status, parent = queue_style(ctx, None, None, STYLE, 1.0, "256", None)
    assert "Upload a photo first" in status
    with pytest.warns(UserWarning, match="unknown style 'nope'"):
        status, parent = queue_style(ctx, photo, None, "nope", 1.0, "256", None)
    assert "unknown style" in status and not isinstance(parent, int)
    ctx.queue = None
    with pytest.warns(UserWarning, match="queue is not running"):
        queue_style(ctx, photo, None, STYLE, 1.0, "256", None)
    assert ctx.gallery.query().total == 0 and jobs(queue) == []
