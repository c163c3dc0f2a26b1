"""Code tab: write code from a description, complete code at a cursor (fill in the middle),
explain code, fix code; optionally run & fix Python in a limited subprocess, round by round.
"Add to queue" queues the same request as a `code` job.

No torch or engine import here: the rounds come from studio.tasks.text.code_events, which
streams each reply; the final result is recorded in the gallery.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import gradio as gr

if TYPE_CHECKING:
    from studio.context import StudioContext

TAB_ID = "code"
TITLE = "Code"
STREAM_EVERY_S = 0.05
GR_LANGUAGE = {"python": "python", "javascript": "javascript", "typescript": "typescript",
               "bash": "shell", "c": "c", "cpp": "cpp", "go": None, "rust": None, "java": None,
               "sql": "sql", "html": "html", "css": "css"}  # gr.Code's highlighters
MODE_FIELDS = {"write": ("description",), "complete": ("prefix", "suffix"), "explain": ("code",),
               "fix": ("code", "error")}  # the text boxes each mode shows


def round_markdown(round_) -> str:
    """One run & fix round: its code, the verdict, what it printed."""
    run = round_.run
    if run is None:
        return ""
    if run.ok:
        verdict = f"passed, ran in {run.duration_s:.2f} s"
    elif run.timed_out:
        verdict = "failed: timed out"
    else:
        verdict = f"failed: exit status {run.returncode}"
    out = (run.stdout or "").strip()[-1500:]
    err = (run.stderr or "").strip()[-1500:]
    text = f"**Round {round_.round}** — {verdict}\n\n```python\n{round_.code}\n```\n"
    if out:
        text += f"\nstdout:\n```\n{out}\n```\n"
    if err:
        text += f"\nstderr:\n```\n{err}\n```\n"
    return text


def code_params(mode, lang, model_id, desc, code, err, pre, suf, fix, max_rounds, temp, p, k,
                rep, max_tokens, seed_value) -> dict:
    """The tab's controls as `code` task params (the task checks them; seed -1 = random)."""
    return {"model": (model_id or "").strip() or None, "mode": mode, "language": lang,
            "description": desc or "", "code": code or "", "error": err or "",
            "prefix": pre or "", "suffix": suf or "", "run_and_fix": bool(fix),
            "rounds": int(max_rounds), "temperature": float(temp), "top_p": float(p),
            "top_k": int(k), "repetition_penalty": float(rep), "max_new_tokens": int(max_tokens),
            "seed": None if seed_value is None or int(seed_value) < 0 else int(seed_value)}


def queue_code(ctx: "StudioContext", *controls) -> str:
    """"Add to queue": one `code` job with the tab's mode, fields, sampling and run & fix. Only
    the mode's own fields go in (a hidden box's old text would only mislabel the job)."""
    from studio.ui.add_to_queue import add_job

    params = code_params(*controls)
    shown = MODE_FIELDS.get(params["mode"], ())
    for name in ("description", "code", "error", "prefix", "suffix"):
        if name not in shown:
            del params[name]
    return add_job(ctx, "code", params,
                   "Its result will be saved to the gallery as a code text item.")


def build(ctx: "StudioContext") -> dict[str, gr.Component]:
    from studio.tasks.text import LANGUAGES
    from studio.ui.chat import model_choices

    running: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                mode = gr.Radio(["write", "complete", "explain", "fix"], value="write", label="Mode",
                                elem_id="code-mode")
                language = gr.Dropdown(list(LANGUAGES), value="python", label="Language",
                                       elem_id="code-language")
            model = gr.Dropdown(label="Model", choices=model_choices(ctx), value="smollm2-135m-instruct",
                                allow_custom_value=True, elem_id="code-model",
                                info="Qwen2.5-Coder (extra) writes better code and has FIM tokens")
            description = gr.Textbox(label="What should the code do?", lines=3,
                                     elem_id="code-description")
            code = gr.Code(label="Code", language="python", lines=10, visible=False,
                           interactive=True, elem_id="code-input")
            error = gr.Textbox(label="Error message (optional)", lines=3, visible=False,
                               elem_id="code-error")
            prefix = gr.Code(label="Code before the cursor", language="python", lines=8,
                             visible=False, interactive=True, elem_id="code-prefix")
            suffix = gr.Code(label="Code after the cursor", language="python", lines=5,
                             visible=False, interactive=True, elem_id="code-suffix")
            with gr.Row():
                run_and_fix = gr.Checkbox(label="Run & fix (Python): run the code in a limited "
                                                "subprocess, feed errors back", value=False,
                                          elem_id="code-run-fix")
                rounds = gr.Slider(1, 5, value=3, step=1, label="Rounds at most")
            with gr.Accordion("Sampling", open=False):
                with gr.Row():
                    temperature = gr.Slider(0, 2, value=0.2, step=0.05, label="Temperature")
                    top_p = gr.Slider(0.01, 1, value=0.95, step=0.01, label="Top-p")
                    top_k = gr.Slider(0, 200, value=40, step=1, label="Top-k")
                with gr.Row():
                    repetition = gr.Slider(1, 2, value=1.05, step=0.01, label="Repetition penalty")
                    max_new = gr.Slider(1, 4096, value=512, step=1, label="Max new tokens")
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="code-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="code-stop")
                add_queue = gr.Button("Add to queue", elem_id="code-queue")
        with gr.Column(scale=3):
            output = gr.Code(label="Code", language="python", lines=18, interactive=False,
                             elem_id="code-output")
            explanation = gr.Markdown(visible=False, elem_id="code-explanation")
            log = gr.Markdown(elem_id="code-rounds")
            status = gr.Markdown(elem_classes=["gs-muted"], elem_id="code-status")

    def on_mode(selected, lang):
        highlight = GR_LANGUAGE.get(lang)
        return (gr.update(visible=selected == "write"),
                gr.update(visible=selected in ("explain", "fix"), language=highlight),
                gr.update(visible=selected == "fix"),
                gr.update(visible=selected == "complete", language=highlight),
                gr.update(visible=selected == "complete", language=highlight),
                gr.update(visible=selected != "explain", language=highlight),
                gr.update(visible=selected == "explain"))

    for trigger in (mode.change, language.change):
        trigger(on_mode, inputs=[mode, language],
                outputs=[description, code, error, prefix, suffix, output, explanation])

    def on_generate(mode_, lang, model_id, desc, code_, err, pre, suf, fix, max_rounds, temp, p, k,
                    rep, max_tokens, seed_value, request: gr.Request):
        from engines.base import CancelToken, Cancelled
        from studio.tasks.text import code_events, record_code, split_code_params

        params = code_params(mode_, lang, model_id, desc, code_, err, pre, suf, fix, max_rounds,
                             temp, p, k, rep, max_tokens, seed_value)
        try:
            split_code_params(params)
        except ValueError as error_:
            gr.Warning(str(error_))
            yield (gr.skip(),) * 4
            return
        cancel = CancelToken()
        running[request.session_hash] = cancel
        done, log_text, last = [], "", 0.0
        explain = mode_ == "explain"
        yield "", "", "", "*generating…*"
        try:
            for kind, number, value in code_events(ctx, params, cancel):
                if kind == "text":
                    if time.perf_counter() - last >= STREAM_EVERY_S:
                        last = time.perf_counter()
                        yield (gr.skip(), value, gr.skip(), f"*round {number}: generating…*") if explain \
                            else (value, gr.skip(), gr.skip(), f"*round {number}: generating…*")
                    continue
                done.append(value)
                log_text += round_markdown(value)
                code_shown = (pre or "") + value.code + (suf or "") if mode_ == "complete" else value.code
                shown = (gr.skip(), value.reply) if explain else (code_shown, gr.skip())
                yield (*shown, log_text, f"*round {number} done*")
        except Cancelled:
            yield gr.skip(), gr.skip(), log_text, "**stopped** — nothing saved"
            return
        except Exception as error_:
            gr.Warning(str(error_))
            yield gr.skip(), gr.skip(), log_text, f"failed: {error_}"
            return
        finally:
            running.pop(request.session_hash, None)
        item = record_code(ctx, params, done)
        stats = done[-1].stats
        verdict = ""
        if done[-1].run is not None:
            verdict = (f" · runs after {len(done)} round(s)" if done[-1].run.ok
                       else f" · still failing after {len(done)} round(s)")
        yield (gr.skip(), gr.skip(), log_text,
               f"{stats.completion_tokens} tokens · {stats.tokens_per_s:.1f} tok/s · "
               f"{'FIM tokens' if stats.fim else stats.backend}{verdict} · gallery item {item.id}")

    controls = [mode, language, model, description, code, error, prefix, suffix, run_and_fix,
                rounds, temperature, top_p, top_k, repetition, max_new, seed]
    generate.click(on_generate, inputs=controls, outputs=[output, explanation, log, status],
                   concurrency_limit=None)
    add_queue.click(lambda *values: queue_code(ctx, *values), inputs=controls, outputs=[status])

    def on_stop(request: gr.Request):
        cancel = running.get(request.session_hash)
        if cancel is not None:
            cancel.cancel()

    stop.click(on_stop, queue=False)
    return {"code": code, "description": description, "output": output}
