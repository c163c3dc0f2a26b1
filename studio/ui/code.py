"""Code tab: write code from a description, complete code at a cursor (fill in the middle),
explain code, fix code; optionally run & fix Python in a limited subprocess, round by round.
"Add to queue" queues the same request as a `code` job.

Generate runs the `code` task as an interactive job through the runner (studio/ui/widgets): the
reply streams from the job's updates (the step is the round), and once the job has saved its
gallery item the rounds' runs are shown from that item. No torch or engine import here.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import gradio as gr

from studio.ui.widgets import PRIVATE, wire_cancel, follow_job, llm_sampling_panel

if TYPE_CHECKING:
    from studio.context import StudioContext

TAB_ID = "code"
TITLE = "Code"
GR_LANGUAGE = {"python": "python", "javascript": "javascript", "typescript": "typescript",
               "bash": "shell", "c": "c", "cpp": "cpp", "go": None, "rust": None, "java": None,
               "sql": "sql", "html": "html", "css": "css"}  # gr.Code's highlighters
MODE_FIELDS = {"write": ("description",), "complete": ("prefix", "suffix"), "explain": ("code",),
               "fix": ("code", "error")}  # the text boxes each mode shows
CONTROLS = ("mode", "language", "model", "description", "code", "error", "prefix", "suffix",
            "run_and_fix", "rounds", "temperature", "top_p", "top_k", "repetition_penalty",
            "max_new_tokens", "seed")


def round_markdown(number: int, run: dict) -> str:
    """One run & fix round (the `runs` summaries the code task stores): verdict and output."""
    if run.get("timed_out"):
        verdict = "failed: timed out"
    elif run.get("returncode") == 0:
        verdict = f"passed, ran in {run.get('duration_s', 0):.2f} s"
    else:
        verdict = f"failed: exit status {run.get('returncode')}"
    text = f"**Round {number}** — {verdict}\n"
    for name in ("stdout", "stderr"):
        out = (run.get(name) or "").strip()[-1500:]
        if out:
            text += f"\n{name}:\n```\n{out}\n```\n"
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


def mode_params(*controls) -> dict:
    """`code_params` with only the mode's own fields (a hidden box's old text would only
    mislabel the job)."""
    params = code_params(*controls)
    shown = MODE_FIELDS.get(params["mode"], ())
    for name in ("description", "code", "error", "prefix", "suffix"):
        if name not in shown:
            del params[name]
    return params


def queue_code(ctx: "StudioContext", *controls) -> str:
    """"Add to queue": one `code` job with the tab's mode, fields, sampling and run & fix."""
    from studio.ui.add_to_queue import add_job

    return add_job(ctx, "code", mode_params(*controls),
                   "Its result will be saved to the gallery as a code text item.")


def on_mode(selected, lang):
    highlight = GR_LANGUAGE.get(lang)
    return (gr.update(visible=selected == "write"),
            gr.update(visible=selected in ("explain", "fix"), language=highlight),
            gr.update(visible=selected == "fix"),
            gr.update(visible=selected == "complete", language=highlight),
            gr.update(visible=selected == "complete", language=highlight),
            gr.update(visible=selected != "explain", language=highlight),
            gr.update(visible=selected == "explain"))


def finished_status(item) -> tuple[str, str]:
    """(rounds log, status line) from the job's gallery item."""
    p = item.params
    runs = p.get("runs") or []
    log = "".join(round_markdown(n, run) for n, run in enumerate(runs, 1))
    verdict = ""
    if runs:
        ok = runs[-1].get("returncode") == 0 and not runs[-1].get("timed_out")
        verdict = (f" · runs after {len(runs)} round(s)" if ok
                   else f" · still failing after {len(runs)} round(s)")
    return log, (f"{p.get('completion_tokens', 0)} tokens · {p.get('tokens_per_s', 0):.1f} tok/s"
                 f" · {'FIM tokens' if p.get('fim') else p.get('backend', '')}{verdict}"
                 f" · gallery item {item.id}")


def generate(ctx, *controls):
    """Generate: yields (job id, code, explanation, rounds log, status) as the job runs."""
    params = mode_params(*controls)
    explain, keep = params["mode"] == "explain", gr.skip()
    update, log = None, ""
    for update in follow_job(ctx, "code", params):
        if update.finished:
            break
        ended = update.step - 1  # run & fix reports the round as the step
        if params["run_and_fix"] and 1 <= ended < params["rounds"] \
                and f"**Round {ended}**" not in log:
            log += (f"**Round {ended}** — the code failed when run; its error goes "
                    "back to the model.\n\n")
        reply = update.text if update.text is not None else update.message
        status = (f"*round {update.step}: generating…*" if update.status == "running"
                  else f"*waiting for job #{update.job_id}…*")
        yield (update.job_id, keep if explain else reply, reply if explain else keep,
               log, status)
    if update.status != "completed":
        message = "**stopped** — nothing saved" if update.status == "canceled" \
            else f"failed: {update.error}"
        yield None, keep, keep, keep, message
        return
    item = ctx.gallery.get(update.result["item_ids"][0])
    log, status = finished_status(item)
    text = update.result.get("text") or item.text or ""
    if params["mode"] == "complete":
        text = params["prefix"] + text + params["suffix"]
    yield None, keep if explain else text, text if explain else keep, log, status


# ------------------------------------------------------------------ layout
def _controls(ctx) -> dict:
    from studio.tasks.text import LANGUAGES
    from studio.ui.chat import model_choices

    c: dict = {}
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                c["mode"] = gr.Radio(["write", "complete", "explain", "fix"], value="write",
                                     label="Mode", elem_id="code-mode")
                c["language"] = gr.Dropdown(list(LANGUAGES), value="python", label="Language",
                                            elem_id="code-language")
            c["model"] = gr.Dropdown(label="Model", choices=model_choices(ctx),
                                     value="smollm2-135m-instruct", allow_custom_value=True,
                                     elem_id="code-model",
                                     info="Qwen2.5-Coder (extra) writes better code and has FIM tokens")
            c["description"] = gr.Textbox(label="What should the code do?", lines=3,
                                          elem_id="code-description")
            c["code"] = gr.Code(label="Code", language="python", lines=10, visible=False,
                                interactive=True, elem_id="code-input")
            c["error"] = gr.Textbox(label="Error message (optional)", lines=3, visible=False,
                                    elem_id="code-error")
            c["prefix"] = gr.Code(label="Code before the cursor", language="python", lines=8,
                                  visible=False, interactive=True, elem_id="code-prefix")
            c["suffix"] = gr.Code(label="Code after the cursor", language="python", lines=5,
                                  visible=False, interactive=True, elem_id="code-suffix")
            with gr.Row():
                c["run_and_fix"] = gr.Checkbox(label="Run & fix (Python): run the code in a "
                                                     "limited subprocess, feed errors back",
                                               value=False, elem_id="code-run-fix")
                c["rounds"] = gr.Slider(1, 5, value=3, step=1, label="Rounds at most")
            with gr.Accordion("Sampling", open=False):
                c.update(llm_sampling_panel(temperature=0.2, top_p=0.95, repetition_penalty=1.05))
            with gr.Row():
                c["generate"] = gr.Button("Generate", variant="primary", elem_id="code-generate")
                c["stop"] = gr.Button("Stop", variant="stop", elem_id="code-stop")
                c["add_queue"] = gr.Button("Add to queue", elem_id="code-queue")
        with gr.Column(scale=3):
            c["output"] = gr.Code(label="Code", language="python", lines=18, interactive=False,
                                  elem_id="code-output")
            c["explanation"] = gr.Markdown(visible=False, elem_id="code-explanation")
            c["log"] = gr.Markdown(elem_id="code-rounds")
            c["status"] = gr.Markdown(elem_classes=["gs-muted"], elem_id="code-status")
    return c


def build(ctx: "StudioContext") -> dict[str, gr.Component]:
    c = _controls(ctx)
    job = gr.State(None)  # this session's running job, for Stop
    shown = [c[name] for name in ("description", "code", "error", "prefix", "suffix", "output",
                                  "explanation")]
    for trigger in (c["mode"].change, c["language"].change):
        trigger(on_mode, [c["mode"], c["language"]], shown, **PRIVATE)
    controls = [c[name] for name in CONTROLS]
    c["generate"].click(partial(generate, ctx), controls,
                        [job, c["output"], c["explanation"], c["log"], c["status"]],
                        concurrency_limit=None, **PRIVATE)
    c["add_queue"].click(partial(queue_code, ctx), controls, [c["status"]], **PRIVATE)
    wire_cancel(ctx, c["stop"], job, queue=False)
    return {"code": c["code"], "description": c["description"], "output": c["output"]}
