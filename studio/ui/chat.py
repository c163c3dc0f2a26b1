"""Chat tab: streamed replies from a local language model, conversations kept in the database.

Send, Stop (sets the generation's cancel token: the engine stops within one token and the partial
reply is kept), Regenerate, Continue, Edit last, Add to queue (a one-off `chat` job whose reply
goes to the gallery). The history shown is a copy of the messages held in a gr.State; a
conversation is saved whole once a reply has ended, so nothing is ever stored half-way. No torch
or engine import here: the work happens in studio.tasks.text.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import gradio as gr

if TYPE_CHECKING:
    from studio.context import StudioContext

TAB_ID = "chat"
TITLE = "Chat"
STREAM_EVERY_S = 0.05  # at most ~20 UI updates a second while streaming
DEFAULT_MODEL = "smollm2-135m-instruct"


def model_choices(ctx: "StudioContext") -> list[tuple[str, str]]:
    from engines.llm.catalog import list_models

    models = list_models((ctx.config.models_dir, *ctx.config.extra_models_dirs))
    return [(m.label, m.model_id) for m in models]


def conversation_choices(store) -> list[tuple[str, int]]:
    return [(f"{c.title}  ·  {c.message_count} msg", c.id) for c in store.list()]


def stats_line(stats, stopped: bool) -> str:
    parts = [f"{stats.completion_tokens} tokens", f"{stats.tokens_per_s:.1f} tok/s"]
    if stats.ttft_s is not None:
        parts.append(f"first token {stats.ttft_s:.2f} s")
    if stats.cached_tokens:
        parts.append(f"{stats.cached_tokens} prompt tokens from cache")
    parts += [stats.backend, f"seed {stats.seed}"]
    if stopped:
        parts.append("**stopped**")
    elif stats.finish_reason == "length":
        parts.append("hit max new tokens")
    return " · ".join(parts)


def trim_notice(stats) -> str:
    if not stats.trimmed_messages:
        return ""
    return (f"⚠️ The {stats.trimmed_messages} oldest message(s) did not fit the model's context window "
            f"({stats.context_length} tokens) and were left out of this reply.")


def sampling_dict(model_id, system_prompt, temp, p, k, rep, max_tokens, seed_value) -> dict:
    """The model, system prompt and sampling controls as chat task params (seed -1 = random)."""
    return {"model": (model_id or DEFAULT_MODEL).strip(), "system_prompt": system_prompt or "",
            "temperature": float(temp), "top_p": float(p), "top_k": int(k),
            "repetition_penalty": float(rep), "max_new_tokens": int(max_tokens),
            "seed": None if seed_value is None or int(seed_value) < 0 else int(seed_value)}


def queue_chat(ctx: "StudioContext", text: str | None, messages: list[dict], *sampling) -> str:
    """"Add to queue": a one-off `chat` job answering the conversation so far plus `text`, with
    the tab's model, system prompt and sampling; the reply lands in the gallery, not here."""
    from studio.ui.add_to_queue import add_job, refuse

    if not (text or "").strip():
        return refuse("The message is empty: type something to queue.")
    history = [{"role": m["role"], "content": m["content"]} for m in messages]
    params = {**sampling_dict(*sampling), "messages": [*history, {"role": "user", "content": text}]}
    return add_job(ctx, "chat", params,
                   "Its reply will be saved to the gallery as a chat text item.")


def build(ctx: "StudioContext") -> dict[str, gr.Component]:
    from studio.chat.store import ChatStore

    store = ChatStore(ctx.db)
    running: dict[str, Any] = {}  # session -> CancelToken of its generation in flight

    with gr.Row():
        with gr.Column(scale=1, min_width=240):
            new_chat = gr.Button("New chat", elem_id="chat-new")
            conversations = gr.Radio(label="Conversations", choices=conversation_choices(store),
                                     elem_id="chat-conversations")
            title = gr.Textbox(label="Title", elem_id="chat-title")
            with gr.Row():
                rename = gr.Button("Rename", size="sm", elem_id="chat-rename")
                delete = gr.Button("Delete", size="sm", variant="stop", elem_id="chat-delete")
        with gr.Column(scale=4):
            model = gr.Dropdown(label="Model", choices=model_choices(ctx), value=DEFAULT_MODEL,
                                allow_custom_value=True, elem_id="chat-model",
                                info="Embedded, models folder, HF cache, or a path to a .gguf / folder")
            chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chat-history",
                                 feedback_options=None, buttons=["copy"])
            notice = gr.Markdown(elem_id="chat-notice")
            message = gr.Textbox(label="Message", lines=3, placeholder="Type a message…",
                                 elem_id="chat-message")
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                stop = gr.Button("Stop", variant="stop", elem_id="chat-stop")
                regenerate = gr.Button("Regenerate", elem_id="chat-regenerate")
                continue_ = gr.Button("Continue", elem_id="chat-continue")
                edit_last = gr.Button("Edit last", elem_id="chat-edit")
                add_queue = gr.Button("Add to queue", elem_id="chat-queue")
            stats = gr.Markdown(elem_id="chat-stats", elem_classes=["gs-muted"])
            with gr.Accordion("System prompt and sampling", open=False):
                system = gr.Textbox(label="System prompt", lines=2, elem_id="chat-system")
                with gr.Row():
                    temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature")
                    top_p = gr.Slider(0.01, 1, value=0.9, step=0.01, label="Top-p")
                    top_k = gr.Slider(0, 200, value=40, step=1, label="Top-k")
                with gr.Row():
                    repetition = gr.Slider(1, 2, value=1.1, step=0.01, label="Repetition penalty")
                    max_new = gr.Slider(1, 4096, value=512, step=1, label="Max new tokens")
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
    history = gr.State([])  # [{"role", "content"}], what the model sees
    conversation_id = gr.State(None)
    sampling_inputs = [model, system, temperature, top_p, top_k, repetition, max_new, seed]

    # ------------------------------------------------------------ generation
    def reply(messages: list[dict], conv_id, settings: dict, request: gr.Request,
              continue_last: bool = False, shown_before: list[dict] | None = None,
              outcome: dict | None = None):
        """Stream one reply to `messages`; yields (chatbot, history, conv id, list, notice, stats,
        title). Saves the conversation (and a gallery item) once it has ended."""
        from engines.base import CancelToken
        from studio.chat.store import MessageView, title_from
        from studio.tasks.text import LiveGeneration, llm_params, record_reply

        try:
            model_id, params = llm_params({**settings, "messages": messages,
                                           "continue_last": continue_last})
        except ValueError as error:
            gr.Warning(str(error))
            if outcome is not None:
                outcome["failed"] = True
            yield (gr.skip(),) * 7  # a generator that yields nothing would clear every output
            return
        cancel = CancelToken()
        running[request.session_hash] = cancel
        shown = [dict(m) for m in messages] + ([] if continue_last else [{"role": "assistant", "content": ""}])
        base = shown[-1]["content"]
        yield shown, gr.skip(), gr.skip(), gr.skip(), "", "*generating…*", gr.skip()
        live = LiveGeneration(ctx, model_id, params, cancel).start()
        last = 0.0
        try:
            for _ in live:
                if time.perf_counter() - last >= STREAM_EVERY_S:
                    shown[-1]["content"] = base + live.text
                    last = time.perf_counter()
                    yield shown, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        except Exception as error:  # bad input found late, load failure: say it, keep nothing
            gr.Warning(str(error))
            if outcome is not None:
                outcome["failed"] = True
            before = shown_before if shown_before is not None else messages
            yield ([{"role": m["role"], "content": m["content"]} for m in before], gr.skip(),
                   gr.skip(), gr.skip(), f"⚠️ {error}", "", gr.skip())
            return
        finally:
            running.pop(request.session_hash, None)
        shown[-1]["content"] = base + live.text
        if not live.text and live.cancelled and not continue_last:
            shown.pop()  # stopped before the first word: keep only the user's message
        # Save: the gallery item, then the whole conversation in one transaction.
        item_id = None
        if live.text:
            item_id = record_reply(ctx, "chat", model_id, messages[-1]["content"] if not continue_last
                                   else "", params, live.text, live.stats).id
        if conv_id is None:
            first_user = next((m["content"] for m in shown if m["role"] == "user"), "New chat")
            conv_id = store.create(title_from(first_user), model_id).id
        views = [MessageView(m["role"], m["content"], item_id if i == len(shown) - 1 and
                             m["role"] == "assistant" else m.get("item_id")) for i, m in enumerate(shown)]
        saved = store.save(conv_id, views, model=model_id, system_prompt=settings["system_prompt"],
                           params={k: v for k, v in settings.items() if k not in ("model", "system_prompt")})
        stored = [{"role": m.role, "content": m.content, "item_id": m.item_id} for m in saved.messages]
        yield ([{"role": m["role"], "content": m["content"]} for m in stored], stored, conv_id,
               gr.update(choices=conversation_choices(store), value=conv_id),
               trim_notice(live.stats), stats_line(live.stats, live.cancelled), saved.title)

    reply_outputs = [chatbot, history, conversation_id, conversations, notice, stats, title]

    def on_send(text, messages, conv_id, model_id, system_prompt, temp, p, k, rep, max_tokens,
                seed_value, request: gr.Request):
        text = text or ""
        if not text.strip():
            gr.Warning("The message is empty: type something to send.")
            yield (gr.skip(),) * 8
            return
        new = [{"role": m["role"], "content": m["content"]} for m in messages]
        new.append({"role": "user", "content": text})
        first = True
        settings = sampling_dict(model_id, system_prompt, temp, p, k, rep, max_tokens, seed_value)
        outcome = {"failed": False}
        for update in reply(new, conv_id, settings, request, shown_before=messages, outcome=outcome):
            yield (*update, text if outcome["failed"] else "" if first else gr.skip())
            first = False

    def on_regenerate(messages, conv_id, model_id, system_prompt, temp, p, k, rep, max_tokens,
                      seed_value, request: gr.Request):
        trimmed = [{"role": m["role"], "content": m["content"]} for m in messages]
        while trimmed and trimmed[-1]["role"] == "assistant":
            trimmed.pop()
        if not trimmed:
            gr.Warning("Nothing to regenerate yet.")
            yield (gr.skip(),) * 7
            return
        settings = sampling_dict(model_id, system_prompt, temp, p, k, rep, max_tokens, seed_value)
        yield from reply(trimmed, conv_id, settings, request)

    def on_continue(messages, conv_id, model_id, system_prompt, temp, p, k, rep, max_tokens,
                    seed_value, request: gr.Request):
        listed = [{"role": m["role"], "content": m["content"]} for m in messages]
        if not listed or listed[-1]["role"] != "assistant":
            gr.Warning("Continue extends the last reply; there is none yet.")
            yield (gr.skip(),) * 7
            return
        settings = sampling_dict(model_id, system_prompt, temp, p, k, rep, max_tokens, seed_value)
        yield from reply(listed, conv_id, settings, request, continue_last=True)

    def on_stop(request: gr.Request):
        cancel = running.get(request.session_hash)
        if cancel is not None:
            cancel.cancel()

    def on_edit_last(messages):
        listed = list(messages)
        users = [i for i, m in enumerate(listed) if m["role"] == "user"]
        if not users:
            gr.Warning("There is no message to edit yet.")
            return gr.skip(), gr.skip(), gr.skip()
        cut = users[-1]
        kept = listed[:cut]
        return ([{"role": m["role"], "content": m["content"]} for m in kept], kept,
                listed[cut]["content"])

    send_event = dict(inputs=[message, history, conversation_id, *sampling_inputs],
                      outputs=[*reply_outputs, message], concurrency_limit=None)
    send.click(on_send, **send_event)
    message.submit(on_send, **send_event)
    regenerate.click(on_regenerate, inputs=[history, conversation_id, *sampling_inputs],
                     outputs=reply_outputs)
    continue_.click(on_continue, inputs=[history, conversation_id, *sampling_inputs],
                    outputs=reply_outputs)
    stop.click(on_stop, queue=False)
    edit_last.click(on_edit_last, inputs=[history], outputs=[chatbot, history, message])
    add_queue.click(lambda text, messages, *sampling: queue_chat(ctx, text, messages, *sampling),
                    inputs=[message, history, *sampling_inputs], outputs=[notice])

    # ------------------------------------------------------------ conversations
    sliders = {"temperature": temperature, "top_p": top_p, "top_k": top_k,
               "repetition_penalty": repetition, "max_new_tokens": max_new}

    def on_select(conv_id):
        """Open a saved conversation with the model, system prompt and sampling it last used."""
        keep = (gr.skip(),) * (7 + len(sliders) + 1)
        if conv_id is None:
            return keep
        try:
            conv = store.get(int(conv_id))
        except LookupError:
            gr.Warning("That conversation no longer exists.")
            return ([], [], None, "", gr.skip(), gr.skip(), "", *keep[7:])
        stored = [{"role": m.role, "content": m.content, "item_id": m.item_id} for m in conv.messages]
        saved = [conv.params[name] if name in conv.params else gr.skip() for name in sliders]
        seed_value = conv.params.get("seed", -1)
        return ([{"role": m["role"], "content": m["content"]} for m in stored], stored, conv.id,
                conv.title, conv.system_prompt, conv.model or gr.skip(), "", *saved,
                -1 if seed_value is None else seed_value)

    conversations.input(on_select, inputs=[conversations],
                        outputs=[chatbot, history, conversation_id, title, system, model, notice,
                                 *sliders.values(), seed])

    def on_new():
        return [], [], None, gr.update(value=None), "", "", ""

    new_chat.click(on_new, outputs=[chatbot, history, conversation_id, conversations, title, notice, stats])

    def on_rename(conv_id, new_title):
        if conv_id is None:
            gr.Warning("Pick a conversation first (a new chat is saved after its first reply).")
            return gr.skip()
        try:
            store.rename(int(conv_id), new_title)
        except (ValueError, LookupError) as error:
            gr.Warning(str(error))
            return gr.skip()
        return gr.update(choices=conversation_choices(store), value=conv_id)

    rename.click(on_rename, inputs=[conversation_id, title], outputs=[conversations])

    def on_delete(conv_id):
        if conv_id is None:
            gr.Warning("Pick a conversation to delete.")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            store.delete(int(conv_id))
        except LookupError:
            pass
        return [], [], None, gr.update(choices=conversation_choices(store), value=None), ""

    delete.click(on_delete, inputs=[conversation_id],
                 outputs=[chatbot, history, conversation_id, conversations, title])

    return {"message": message, "chatbot": chatbot, "conversations": conversations, "model": model}


def on_load(ctx: "StudioContext", demo: gr.Blocks, handles: dict) -> None:
    """A reloaded page lists the conversations saved since the UI was built."""
    from studio.chat.store import ChatStore

    store = ChatStore(ctx.db)
    demo.load(lambda: gr.update(choices=conversation_choices(store)), outputs=[handles["conversations"]])
