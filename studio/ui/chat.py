"""Chat tab: streamed replies from a local language model, conversations kept in the database.

Send (the button, or Enter; Shift+Enter starts a new line), Stop (cancels the reply's job: the
engine stops within one token and the words so far stay in the conversation), Regenerate,
Continue, Edit last, Add to queue (a one-off `chat` job whose reply goes to the gallery only).

Each reply is a `chat` job run through the runner (studio/ui/widgets.follow_job); its text
streams from the job's updates. Storage is behind studio/chat/service.py: the conversation is
saved whole once a reply has ended, so nothing is ever stored half-way.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import gradio as gr

from studio.chat.service import ChatService, as_dicts, for_display
from studio.ui import chat_transfer as files
from studio.ui.chat_documents import controls as doc_controls
from studio.ui.chat_documents import sources_markdown
from studio.ui.widgets import PRIVATE, wire_cancel, follow_job, llm_sampling_panel

if TYPE_CHECKING:
    from studio.context import StudioContext

TAB_ID = "chat"
TITLE = "Chat"
DEFAULT_MODEL = "smollm2-135m-instruct"
SLIDERS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


def model_choices(ctx: "StudioContext") -> list[tuple[str, str]]:
    from engines.llm.catalog import list_models

    models = list_models((ctx.config.models_dir, *ctx.config.extra_models_dirs))
    return [(m.label, m.model_id) for m in models]


def stats_line(info: dict | None, stopped: bool) -> str:
    """The line under the chat: tokens, speed, time to first token, backend, seed."""
    if not info:
        return "**stopped**" if stopped else ""
    parts = [f"{info.get('completion_tokens', 0)} tokens",
             f"{info.get('tokens_per_s', 0):.1f} tok/s"]
    if info.get("ttft_s") is not None:
        parts.append(f"first token {info['ttft_s']:.2f} s")
    if info.get("cached_tokens"):
        parts.append(f"{info['cached_tokens']} prompt tokens from cache")
    parts += [str(info.get("backend", "")), f"seed {info.get('seed')}"]
    if stopped:
        parts.append("**stopped**")
    elif info.get("finish_reason") == "length":
        parts.append("hit max new tokens")
    return " · ".join(parts)


def trim_notice(info: dict | None) -> str:
    if not info or not info.get("trimmed_messages"):
        return ""
    return (f"⚠️ The {info['trimmed_messages']} oldest message(s) did not fit the model's "
            f"context window ({info.get('context_length')} tokens) and were left out of this reply.")


def sampling_dict(model_id, system_prompt, temp, p, k, rep, max_tokens, seed_value,
                  reply_format="plain", schema="") -> dict:
    """The model, system prompt, sampling and reply format controls as chat task params (seed
    -1 = random)."""
    settings = {"model": (model_id or DEFAULT_MODEL).strip(), "system_prompt": system_prompt or "",
                "temperature": float(temp), "top_p": float(p), "top_k": int(k),
                "repetition_penalty": float(rep), "max_new_tokens": int(max_tokens),
                "seed": None if seed_value is None or int(seed_value) < 0 else int(seed_value)}
    response_format = response_format_of(reply_format, schema)
    if response_format is not None:
        settings["response_format"] = response_format
    return settings


REPLY_FORMATS = ("plain", "JSON", "JSON schema")


def response_format_of(reply_format: str | None, schema: str | None) -> dict | None:
    """The OpenAI-style `response_format` the reply format controls ask for (None: plain text);
    gr.Error when the schema box does not hold a JSON object."""
    import json

    if reply_format in (None, "", "plain"):
        return None
    if reply_format == "JSON":
        return {"type": "json_object"}
    if reply_format != "JSON schema":
        raise gr.Error(f"Reply format must be one of {', '.join(REPLY_FORMATS)}, got {reply_format!r}.")
    try:
        parsed = json.loads(schema or "")
    except json.JSONDecodeError as error:
        raise gr.Error(f"The JSON schema is not valid JSON: {error.msg} (line {error.lineno}, "
                       f"column {error.colno}).") from None
    if not isinstance(parsed, dict):
        raise gr.Error("The JSON schema must be a JSON object, e.g. {\"type\": \"object\", ...}.")
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": parsed}}


def queue_chat(ctx: "StudioContext", text: str | None, messages: list[dict], *sampling,
               conversation_id: int | None = None) -> str:
    """"Add to queue": a one-off `chat` job answering the conversation so far plus `text`, with
    the tab's model, system prompt and sampling (with `conversation_id`: a `chat_documents` job
    answering from its documents); the reply lands in the gallery, not here."""
    from studio.ui.add_to_queue import add_job, refuse

    if not (text or "").strip():
        return refuse("The message is empty: type something to queue.")
    params = {**sampling_dict(*sampling),
              "messages": [*for_display(messages), {"role": "user", "content": text}]}
    task = "chat"
    if conversation_id is not None:
        task, params["conversation_id"] = "chat_documents", int(conversation_id)
    return add_job(ctx, task, params,
                   "Its reply will be saved to the gallery as a chat text item.")


def queue_from_tab(ctx, chats: ChatService, text, messages, conv_id, use_docs, *sampling) -> str:
    """The Add to queue button: from the documents when they are attached and in use."""
    grounded = bool(use_docs) and conv_id is not None and bool(chats.documents(conv_id))
    return queue_chat(ctx, text, messages, *sampling,
                      conversation_id=int(conv_id) if grounded else None)


# ------------------------------------------------------------------ one reply
def stream_reply(ctx, chats: ChatService, messages: list[dict], conv_id, settings: dict,
                 continue_last: bool = False, typed: str | None = None, use_docs: bool = False):
    """Run one reply to `messages` as a job; yields (job, chatbot, history, conv id, list,
    notice, stats, title, message box, sources). `typed`: the message just sent, cleared from
    the box at once and given back if the reply fails. With `use_docs` and documents attached,
    the reply is a "chat_documents" job answering from them. Saves the conversation once the
    reply ended."""
    keep = gr.skip()
    params = {**settings, "messages": for_display(messages), "continue_last": continue_last}
    task = "chat"
    if use_docs and conv_id is not None and chats.documents(conv_id):
        task, params["conversation_id"] = "chat_documents", int(conv_id)
    shown = [dict(m) for m in messages] + ([] if continue_last else
                                           [{"role": "assistant", "content": ""}])
    base, text, update = shown[-1]["content"], "", None
    for update in follow_job(ctx, task, params):  # a refused request raises gr.Error here
        text = update.text if update.text is not None else text
        shown[-1]["content"] = base + text
        if not update.finished:
            waiting = "*generating…*" if update.status == "running" else \
                f"*waiting for job #{update.job_id}…*"
            yield (update.job_id, for_display(shown), keep, keep, keep, "", waiting, keep,
                   "" if typed is not None else keep, "")
    if update.status == "failed":  # bad input found late, a load failure: say it, keep nothing
        gr.Warning(update.error or "The reply failed.")
        before = messages[:-1] if typed is not None else messages
        yield (None, for_display(before), keep, keep, keep, f"⚠️ {update.error}", "", keep,
               typed if typed is not None else keep, "")
        return
    result = update.result or {}
    if update.status == "completed":
        text = result.get("text") or text
    shown[-1]["content"] = base + text
    stopped = update.status == "canceled"
    if stopped and not text and not continue_last:
        shown.pop()  # stopped before the first word: keep only the user's message
    item_ids = result.get("item_ids") or [None]
    saved = chats.record_turn(
        conv_id, shown, reply_item_id=item_ids[0], model=settings["model"],
        system_prompt=settings["system_prompt"],
        params={k: v for k, v in settings.items() if k not in ("model", "system_prompt")})
    stored = as_dicts(saved)
    info = result.get("info")
    yield (None, for_display(stored), stored, saved.id,
           gr.update(choices=chats.choices(), value=saved.id), trim_notice(info),
           stats_line(info, stopped), saved.title, keep, sources_markdown(info))


# ------------------------------------------------------------------ handlers
def send(ctx, chats, text, messages, conv_id, use_docs, *sampling):
    if not (text or "").strip():
        gr.Warning("The message is empty: type something to send.")
        yield (gr.skip(),) * 10
        return
    new = [*messages, {"role": "user", "content": text}]
    yield from stream_reply(ctx, chats, new, conv_id, sampling_dict(*sampling), typed=text,
                            use_docs=use_docs)


def regenerate(ctx, chats, text, messages, conv_id, use_docs, *sampling):
    trimmed = list(messages)
    while trimmed and trimmed[-1]["role"] == "assistant":
        trimmed.pop()
    if not trimmed:
        gr.Warning("Nothing to regenerate yet.")
        yield (gr.skip(),) * 10
        return
    yield from stream_reply(ctx, chats, trimmed, conv_id, sampling_dict(*sampling), use_docs=use_docs)


def continue_reply(ctx, chats, text, messages, conv_id, use_docs, *sampling):
    if not messages or messages[-1]["role"] != "assistant":
        gr.Warning("Continue extends the last reply; there is none yet.")
        yield (gr.skip(),) * 10
        return
    yield from stream_reply(ctx, chats, list(messages), conv_id, sampling_dict(*sampling),
                            continue_last=True, use_docs=use_docs)


def edit_last(messages):
    """The last user message goes back to the box; it and what followed leave the chat."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        gr.Warning("There is no message to edit yet.")
        return gr.skip(), gr.skip(), gr.skip()
    kept = list(messages[:users[-1]])
    return for_display(kept), kept, messages[users[-1]]["content"]


def open_conversation(chats, conv_id):
    """A saved conversation with the model, system prompt and sampling it last used."""
    keep = (gr.skip(),) * (7 + len(SLIDERS) + 1)
    if conv_id is None:
        return keep
    try:
        conv = chats.open(conv_id)
    except LookupError:
        gr.Warning("That conversation no longer exists.")
        return ([], [], None, "", gr.skip(), gr.skip(), "", *keep[7:])
    stored = as_dicts(conv)
    saved = [conv.params[name] if name in conv.params else gr.skip() for name in SLIDERS]
    seed_value = conv.params.get("seed", -1)
    return (for_display(stored), stored, conv.id, conv.title, conv.system_prompt,
            conv.model or gr.skip(), "", *saved, -1 if seed_value is None else seed_value)


def new_chat():
    return [], [], None, gr.update(value=None), "", "", ""


def rename(chats, conv_id, new_title):
    if conv_id is None:
        gr.Warning("Pick a conversation first (a new chat is saved after its first reply).")
        return gr.skip()
    try:
        chats.rename(conv_id, new_title)
    except (ValueError, LookupError) as error:
        gr.Warning(str(error))
        return gr.skip()
    return gr.update(choices=chats.choices(), value=conv_id)


def delete(chats, conv_id):
    if conv_id is None:
        gr.Warning("Pick a conversation to delete.")
        return (gr.skip(),) * 5
    chats.delete(conv_id)
    return [], [], None, gr.update(choices=chats.choices(), value=None), ""


def list_conversations(chats):
    return gr.update(choices=chats.choices())


# ------------------------------------------------------------------ layout
def _controls(ctx, chats: ChatService) -> dict:
    c: dict = {}
    with gr.Row():
        with gr.Column(scale=1, min_width=240):
            c["new"] = gr.Button("New chat", elem_id="chat-new")
            c["search"] = gr.Textbox(label="Search conversations", elem_id="chat-search",
                                     placeholder="words in titles or messages")
            c["conversations"] = gr.Radio(label="Conversations", choices=chats.choices(),
                                          elem_id="chat-conversations")
            c["title"] = gr.Textbox(label="Title", elem_id="chat-title")
            with gr.Row():
                c["rename"] = gr.Button("Rename", size="sm", elem_id="chat-rename")
                c["delete"] = gr.Button("Delete", size="sm", variant="stop", elem_id="chat-delete")
            with gr.Accordion("Export / import", open=False):
                with gr.Row():
                    c["export_json"] = gr.Button("Export JSON", size="sm", elem_id="chat-export-json")
                    c["export_md"] = gr.Button("Export Markdown", size="sm", elem_id="chat-export-md")
                c["export_file"] = gr.File(label="Download", interactive=False, elem_id="chat-export-file")
                c["import"] = gr.UploadButton("Import JSON", file_types=[".json"], size="sm",
                                              elem_id="chat-import")
        with gr.Column(scale=4):
            c["model"] = gr.Dropdown(label="Model", choices=model_choices(ctx), value=DEFAULT_MODEL,
                                     allow_custom_value=True, elem_id="chat-model",
                                     info="Embedded, models folder, HF cache, or a path to a .gguf / folder")
            c["chatbot"] = gr.Chatbot(label="Conversation", height=460, elem_id="chat-history",
                                      feedback_options=None, buttons=["copy"])
            c["notice"] = gr.Markdown(elem_id="chat-notice")
            # lines=1 with room to grow: Enter sends, Shift+Enter starts a new line.
            c["message"] = gr.Textbox(label="Message", lines=1, max_lines=10, elem_id="chat-message",
                                      placeholder="Type a message… (Enter sends, Shift+Enter: new line)")
            with gr.Row():
                c["send"] = gr.Button("Send", variant="primary", elem_id="chat-send")
                c["stop"] = gr.Button("Stop", variant="stop", elem_id="chat-stop")
                c["regenerate"] = gr.Button("Regenerate", elem_id="chat-regenerate")
                c["continue"] = gr.Button("Continue", elem_id="chat-continue")
                c["edit"] = gr.Button("Edit last", elem_id="chat-edit")
                c["add"] = gr.Button("Add to queue", elem_id="chat-queue")
            c["sources"] = gr.Markdown(elem_id="chat-sources")
            c["stats"] = gr.Markdown(elem_id="chat-stats", elem_classes=["gs-muted"])
            c.update(doc_controls())
            with gr.Accordion("System prompt and sampling", open=False):
                c["system"] = gr.Textbox(label="System prompt", lines=2, elem_id="chat-system")
                c.update(llm_sampling_panel(temperature=0.7, top_p=0.9, repetition_penalty=1.1))
                c["format"] = gr.Radio(list(REPLY_FORMATS), value="plain", label="Reply format",
                                       elem_id="chat-format",
                                       info="JSON and JSON schema constrain decoding: the reply always parses")
                c["schema"] = gr.Textbox(label="JSON schema (for the JSON schema format)", lines=4,
                                         elem_id="chat-schema",
                                         placeholder='{"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}')
    return c


def build(ctx: "StudioContext") -> dict[str, gr.Component]:
    chats = ChatService(ctx.db)
    c = _controls(ctx, chats)
    history, conv_id, job = gr.State([]), gr.State(None), gr.State(None)  # per browser session
    sampling = [c["model"], c["system"], *(c[name] for name in SLIDERS), c["seed"], c["format"],
                c["schema"]]
    reply_inputs = [c["message"], history, conv_id, c["use_docs"], *sampling]
    reply_outputs = [job, c["chatbot"], history, conv_id, c["conversations"], c["notice"],
                     c["stats"], c["title"], c["message"], c["sources"]]
    for trigger, handler in ((c["send"].click, send), (c["message"].submit, send),
                             (c["regenerate"].click, regenerate),
                             (c["continue"].click, continue_reply)):
        trigger(partial(handler, ctx, chats), reply_inputs, reply_outputs,
                concurrency_limit=None, **PRIVATE)
    wire_cancel(ctx, c["stop"], job, queue=False)
    c["edit"].click(edit_last, [history], [c["chatbot"], history, c["message"]], **PRIVATE)
    c["add"].click(partial(queue_from_tab, ctx, chats), [c["message"], history, conv_id, c["use_docs"],
                                                     *sampling], [c["notice"]], **PRIVATE)
    opened = c["conversations"].input(
        partial(open_conversation, chats), [c["conversations"]],
        [c["chatbot"], history, conv_id, c["title"], c["system"], c["model"], c["notice"],
         *(c[name] for name in SLIDERS), c["seed"]], **PRIVATE)
    cleared = c["new"].click(new_chat, None, [c["chatbot"], history, conv_id, c["conversations"],
                                    c["title"], c["notice"], c["stats"]], **PRIVATE)
    c["rename"].click(partial(rename, chats), [conv_id, c["title"]], [c["conversations"]], **PRIVATE)
    deleted = c["delete"].click(partial(delete, chats), [conv_id],
                      [c["chatbot"], history, conv_id, c["conversations"], c["title"]], **PRIVATE)
    c["search"].change(partial(files.search_conversations, chats), [c["search"]], [c["conversations"]],
                       **PRIVATE)
    for button, kind in ((c["export_json"], "json"), (c["export_md"], "md")):
        button.click(partial(files.export_conversation, ctx, chats, kind=kind), [conv_id],
                     [c["export_file"]], **PRIVATE)
    imported = c["import"].upload(
        partial(files.import_conversation, ctx, chats), [c["import"]],
        [c["chatbot"], history, conv_id, c["conversations"], c["title"]], **PRIVATE)
    _wire_documents(ctx, chats, c, conv_id, (opened, cleared, deleted, imported))
    return {"message": c["message"], "chatbot": c["chatbot"],
            "conversations": c["conversations"], "model": c["model"], "_chats": chats}


def _wire_documents(ctx, chats, c: dict, conv_id, switches) -> None:
    """Attach / remove documents; the attached list follows the open conversation."""
    from studio.ui import chat_documents as docs

    def refresh(conv):
        return docs.documents_markdown(chats, conv), docs.document_choices(chats, conv), ""

    for event in switches:  # another conversation is open: show its documents
        event.then(refresh, [conv_id], [c["docs"], c["doc_pick"], c["sources"]], **PRIVATE)
    c["attach"].upload(partial(docs.attach, ctx, chats), [c["attach"], conv_id],
                       [conv_id, c["docs"], c["notice"], c["conversations"], c["doc_pick"]],
                       concurrency_limit=None, **PRIVATE)
    c["doc_remove"].click(partial(docs.remove, chats), [conv_id, c["doc_pick"]],
                          [c["docs"], c["doc_pick"]], **PRIVATE)


def on_load(ctx: "StudioContext", demo: gr.Blocks, handles: dict) -> None:
    """A reloaded page lists the conversations saved since the UI was built."""
    demo.load(partial(list_conversations, handles["_chats"]), None,
              [handles["conversations"]], **PRIVATE)
