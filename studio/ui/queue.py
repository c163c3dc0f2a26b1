"""Queue tab: add many jobs at once (prompt templates, prompt files), watch them run, control them.

Thin: every action is one JobQueue call; expansion and file parsing live in studio.jobs.expand.
The list refreshes itself every second (a gr.Timer) from the rows plus the worker's in-memory
progress, so it also shows jobs queued from other tabs and from the REST API. A selected job shows
its outputs (thumbnails and text); "Open in gallery" sends the chosen one to the Gallery tab's
`item_id` receiver (see `wire`), which opens its detail.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import gradio as gr

from studio.ui.widgets import PRIVATE

TAB_ID = "queue"
TITLE = "Queue"
LIST_LIMIT = 200
COLUMNS = ["#", "Status", "Priority", "Task", "Prompt", "Progress", "ETA", "Outputs", "Error",
           "Worker"]  # the worker that runs / ran it: name@host:pid (a Ray actor, docs/scale-out.md)
STATUS_TEXT = {"paused": "held"}  # a held job's row status is `paused`


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _params(text: str) -> dict:
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise gr.Error(f"Parameters must be a JSON object like {{\"steps\": 20}}: {error}")
    if not isinstance(value, dict):
        raise gr.Error(f"Parameters must be a JSON object, got {type(value).__name__}")
    return value


def _for_task(task: str, params: dict) -> dict:
    """The queue tab speaks in prompts; chat and code take theirs under other names."""
    if task == "chat" and "prompt" in params and "messages" not in params:
        rest = {k: v for k, v in params.items() if k != "prompt"}
        return {**rest, "messages": [{"role": "user", "content": params["prompt"]}]}
    if task == "code" and "prompt" in params and "description" not in params:
        rest = {k: v for k, v in params.items() if k != "prompt"}
        return {"mode": "write", **rest, "description": params["prompt"]}
    return params


def _read_file(file) -> tuple[str, str]:
    if file is None:
        raise gr.Error("Choose a .txt or .csv file first.")
    path = Path(file if isinstance(file, str) else file.name)
    if path.stat().st_size > 5 << 20:
        raise gr.Error("The prompt file is larger than 5 MB.")
    try:
        return path.read_text(encoding="utf-8-sig"), path.name
    except UnicodeDecodeError:
        raise gr.Error("The prompt file must be UTF-8 text.")


# ------------------------------------------------------------------ the list
def _progress(job, live) -> str:
    progress = live.get(job.id)
    if job.status == "running" and progress is not None and progress.total:
        return f"{progress.fraction:.0%} ({progress.step}/{progress.total})"
    if job.status == "running":
        return f"{job.progress:.0%}"
    if job.status == "completed":
        return f"100% in {_duration(job.duration_s)}"
    return ""


def snapshot(ctx):
    """The list's values (table, summary, preview, row ids) and the jobs they show."""
    queue = ctx.queue
    if queue is None:
        return ([], "**This studio runs without a queue.**", None, []), []
    jobs = queue.list(limit=LIST_LIMIT)
    live = queue.live()
    etas = queue.etas(jobs)
    rows = [[job.id, STATUS_TEXT.get(job.status, job.status), job.priority, job.task, job.label,
             _progress(job, live), _duration(etas.get(job.id)),
             " ".join(f"#{i}" for i in job.item_ids), job.error or "", job.worker or ""]
            for job in jobs]
    counts = queue.counts()
    parts = [f"{counts[s]} {s}" for s in ("running", "pending", "paused", "completed",
                                           "failed", "canceled") if counts[s]]
    last_eta = max(etas.values(), default=None)
    if queue.paused:
        state = "**Paused** (a running job finishes; no new one starts)"
    else:
        state = "**Working**" if counts["running"] or counts["pending"] else "**Idle**"
    text = f"{state} · {', '.join(parts) or 'empty'}" + (
        f" · all done in about {_duration(last_eta)}" if last_eta else "")
    running = next(iter(live.values()), None)
    return (rows, text, running.preview if running is not None else None,
            [j.id for j in jobs]), jobs


def refresh(ctx):
    return snapshot(ctx)[0]


def tick(ctx, selected, shown):
    """The timer: the list, and the selected job's outputs once they change (it finished)."""
    values, jobs = snapshot(ctx)
    job = next((j for j in jobs if shown and j.id == shown["job"] == selected), None)
    if job is None or list(job.item_ids) == shown["items"]:
        return (*values, *(gr.skip(),) * 4)
    return (*values, *job_outputs(ctx, job.id))


def job_outputs(ctx, selected):
    """Thumbnails and text of the job's gallery items, and the items to choose from for "Open
    in gallery" (the first one chosen)."""
    empty = ([], gr.update(value="", visible=False), gr.update(choices=[], value=None), None)
    if selected is None or ctx.queue is None:
        return empty
    try:
        job = ctx.queue.get(int(selected))
    except LookupError:
        return empty
    thumbs, texts, choices, images = [], [], [], []
    for item_id in job.item_ids:
        try:
            item = ctx.gallery.get(item_id)
        except LookupError:  # deleted in the Gallery tab since
            continue
        about = (item.prompt or item.text or "").replace("\n", " ")[:60]
        choices.append((f"#{item.id} {item.kind}: {about}", item.id))
        if item.kind == "image" and item.thumb_path is not None:
            thumbs.append((str(item.thumb_path), f"#{item.id}"))
            images.append(item.id)
        elif item.kind == "text":
            texts.append(f"#{item.id}\n{item.text or ''}")
    return (thumbs, gr.update(value="\n\n".join(texts), visible=bool(texts)),
            gr.update(choices=choices, value=choices[0][1] if choices else None),
            {"job": job.id, "items": list(job.item_ids), "images": images})


def picked_row(ids, event: gr.SelectData):
    row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    return ids[row] if row is not None and row < len(ids) else gr.skip()


def pick_output(shown, event: gr.SelectData):
    images = (shown or {}).get("images", [])
    if not isinstance(event.index, int) or event.index >= len(images):
        return gr.skip()
    return images[event.index]


# ------------------------------------------------------------------ adding jobs
def preview_count(ctx, task_name, text, use_matrix, file) -> str:
    """How many jobs the prompt and the file make, before anything is queued."""
    from studio.jobs import expand

    wildcards, lines = ctx.config.wildcards_dir, []
    try:
        if text and text.strip():
            n = expand.count_prompts(text, wildcards, bool(use_matrix))
            lines.append(f"The prompt makes **{n:,}** job{'s' if n != 1 else ''}.")
        if file is not None:
            content, name = _read_file(file)
            rows = expand.parse_prompt_file(content, name)
            n = expand.count_jobs(rows, wildcards, bool(use_matrix))
            lines.append(f"The file **{name}** has {len(rows)} prompt line"
                         f"{'s' if len(rows) != 1 else ''}, making **{n:,}** job"
                         f"{'s' if n != 1 else ''}.")
    except (ValueError, gr.Error) as error:
        lines.append(f"⚠ {error}")
    limit = ctx.queue.max_jobs_per_request if ctx.queue is not None else expand.MAX_EXPANSION
    return "\n\n".join(lines) + (f"\n\n(At most {limit:,} jobs per request.)" if lines else "")


def enqueue(ctx, task_name, rows, base, use_matrix, level) -> None:
    from studio.jobs import expand

    queue = ctx.queue
    if queue is None:
        raise gr.Error("This studio runs without a queue.")
    if not task_name:
        raise gr.Error("Choose a task.")
    try:
        jobs = expand.expand_jobs(base, rows, ctx.config.wildcards_dir, bool(use_matrix),
                                  queue.max_jobs_per_request)
        ids = queue.enqueue_many(task_name, [_for_task(task_name, j) for j in jobs],
                                 priority=int(level or 0))
    except ValueError as error:
        raise gr.Error(str(error))
    gr.Info(f"Queued {len(ids):,} job{'s' if len(ids) != 1 else ''} (#{ids[0]}–#{ids[-1]}).")


def add_prompt(ctx, task_name, text, base_text, use_matrix, level):
    if not (text or "").strip():
        raise gr.Error("Type a prompt first.")
    enqueue(ctx, task_name, [{"prompt": text}], _params(base_text), use_matrix, level)
    return refresh(ctx)


def add_prompt_file(ctx, task_name, file, base_text, use_matrix, level):
    from studio.jobs import expand

    content, name = _read_file(file)
    try:
        rows = expand.parse_prompt_file(content, name)
    except ValueError as error:
        raise gr.Error(f"{name}: {error}")
    enqueue(ctx, task_name, rows, _params(base_text), use_matrix, level)
    return refresh(ctx)


# ------------------------------------------------------------------ controlling jobs
ACTIONS = {
    "Cancel": lambda queue, job: queue.cancel(job),
    "Retry": lambda queue, job: queue.retry(job),
    "↑ Up": lambda queue, job: queue.move(job, "up"),
    "↓ Down": lambda queue, job: queue.move(job, "down"),
    "To top": lambda queue, job: queue.move(job, "top"),
    "Hold / release": lambda queue, job: queue.hold(job, queue.get(job).status == "pending"),
}


def act(ctx, label: str, selected):
    if selected is None or ctx.queue is None:
        raise gr.Error("Select a job first (click its row).")
    try:
        ACTIONS[label](ctx.queue, int(selected))
    except (ValueError, LookupError) as error:
        raise gr.Error(str(error))
    return refresh(ctx)


def set_paused(ctx, value: bool):
    if ctx.queue is None:
        raise gr.Error("This studio runs without a queue.")
    ctx.queue.pause() if value else ctx.queue.resume()
    return refresh(ctx)


def clear_finished(ctx):
    if ctx.queue is not None:
        gr.Info(f"Cleared {ctx.queue.clear_finished()} finished jobs (their gallery items stay).")
    return refresh(ctx)


def send_to_gallery(item_id):
    if item_id is None:
        raise gr.Error("Select a finished job (click its row), then one of its outputs.")
    return int(item_id), gr.Tabs(selected="gallery")


# ------------------------------------------------------------------ layout
def _adding(ctx) -> dict:
    from studio.tasks import task_names

    names = task_names()
    c: dict = {}
    with gr.Row(equal_height=True):
        c["task"] = gr.Dropdown(names, value="txt2img" if "txt2img" in names else
                                (names[0] if names else None), label="Task", scale=1,
                                elem_id="queue-task")
        c["priority"] = gr.Number(0, label="Priority (higher runs first)", precision=0, scale=1)
        c["matrix"] = gr.Checkbox(label="Prompt matrix (a|b|c: first part always, the others "
                                        "on/off)", scale=2)
    c["prompt"] = gr.Textbox(
        label="Prompt", lines=3, elem_id="queue-prompt",
        placeholder="a {red|green|blue} car at __time_of_day__   ({a|b} = every option; "
                    f"__name__ = each line of {ctx.config.wildcards_dir}/name.txt)")
    c["params"] = gr.Textbox(label="Other parameters for every job (JSON)", value="{}", lines=1,
                             elem_id="queue-params", placeholder='{"steps": 20, "width": 512}')
    with gr.Row(equal_height=True):
        c["file"] = gr.File(label="Prompt file: one prompt per line (optional --steps 20 ... "
                                  "after it), or CSV with a prompt column",
                            file_types=[".txt", ".csv"], type="filepath", scale=3, height=140,
                            elem_id="queue-file")
        with gr.Column(scale=1):
            c["add"] = gr.Button("Add prompt to queue", variant="primary", elem_id="queue-add")
            c["add_file"] = gr.Button("Add file to queue", variant="primary",
                                      elem_id="queue-add-file")
    c["count"] = gr.Markdown(elem_id="queue-count")
    return c


def _listing() -> dict:
    c: dict = {}
    with gr.Row(equal_height=True):
        c["summary"] = gr.Markdown(elem_id="queue-summary")
        c["pause"] = gr.Button("Pause queue", size="sm", elem_id="queue-pause")
        c["resume"] = gr.Button("Resume queue", size="sm", elem_id="queue-resume")
        c["clear"] = gr.Button("Clear finished", size="sm", elem_id="queue-clear")
    c["table"] = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True,
                              elem_id="queue-list", max_height=480)
    with gr.Row():
        c["job_id"] = gr.Number(label="Selected job # (click a row)", precision=0, scale=1,
                                min_width=160, elem_id="queue-job-id")
        ids = {"Cancel": "queue-cancel", "Retry": "queue-retry"}
        c["actions"] = {label: gr.Button(label, size="sm", elem_id=ids.get(label),
                                         variant="stop" if label == "Cancel" else "secondary")
                        for label in ACTIONS}
    with gr.Row():
        c["preview"] = gr.Image(label="Running job", interactive=False, height=256, scale=1,
                                elem_classes=["gs-crisp"])
        with gr.Column(scale=3):
            c["outputs"] = gr.Gallery(
                label="Outputs of the selected job (click one to choose it)", columns=6,
                height=256, allow_preview=False, object_fit="contain", fit_columns=False,
                interactive=False, elem_id="queue-outputs", elem_classes=["gs-crisp"])
            c["output_text"] = gr.Textbox(label="Text outputs of the selected job", lines=4,
                                          max_lines=12, interactive=False, visible=False,
                                          elem_id="queue-output-text")
            with gr.Row(equal_height=True):
                c["output_pick"] = gr.Dropdown([], label="Output (gallery item)", scale=3,
                                               elem_id="queue-output-pick")
                c["open"] = gr.Button("Open in gallery", size="sm", scale=1,
                                      elem_id="queue-open-gallery")
    return c


def build(ctx) -> dict:
    c = {**_adding(ctx), **_listing()}
    shown_ids = gr.State([])  # job ids of the table's rows
    shown = gr.State(None)  # {"job", "items", "images"} of the outputs shown below
    listed = [c["table"], c["summary"], c["preview"], shown_ids]
    outputs = [c["outputs"], c["output_text"], c["output_pick"], shown]
    for component in (c["prompt"], c["matrix"], c["file"]):
        component.change(partial(preview_count, ctx), [c["task"], c["prompt"], c["matrix"],
                                                       c["file"]], c["count"],
                         show_progress="hidden", **PRIVATE)
    adding = [c["task"], c["prompt"], c["params"], c["matrix"], c["priority"]]
    c["add"].click(partial(add_prompt, ctx), adding, listed, **PRIVATE)
    c["prompt"].submit(partial(add_prompt, ctx), adding, listed, **PRIVATE)
    c["add_file"].click(partial(add_prompt_file, ctx), [c["task"], c["file"], c["params"],
                                                        c["matrix"], c["priority"]], listed, **PRIVATE)
    gr.Timer(1.0).tick(partial(tick, ctx), [c["job_id"], shown], listed + outputs,
                       show_progress="hidden", **PRIVATE)
    c["pause"].click(partial(set_paused, ctx, True), None, listed, **PRIVATE)
    c["resume"].click(partial(set_paused, ctx, False), None, listed, **PRIVATE)
    c["clear"].click(partial(clear_finished, ctx), None, listed, **PRIVATE)
    c["table"].select(picked_row, [shown_ids], [c["job_id"]], **PRIVATE).then(
        partial(job_outputs, ctx), [c["job_id"]], outputs, **PRIVATE)
    c["job_id"].submit(partial(job_outputs, ctx), [c["job_id"]], outputs, **PRIVATE)
    c["outputs"].select(pick_output, [shown], c["output_pick"], **PRIVATE)
    for label, button in c["actions"].items():
        button.click(partial(act, ctx, label), [c["job_id"]], listed, **PRIVATE)
    return {"prompt": c["prompt"], "_refresh": (partial(refresh, ctx), listed),
            "_output_pick": c["output_pick"], "_open_in_gallery": c["open"]}


def on_load(ctx, demo, own: dict) -> None:
    handler, outputs = own["_refresh"]
    demo.load(handler, None, outputs, **PRIVATE)


def wire(ctx, tabs, handles: dict) -> None:
    """"Open in gallery" puts the chosen output's item id in the Gallery tab's `item_id`
    receiver (which opens its detail) and switches to that tab; hidden without the receiver."""
    own = handles[TAB_ID]
    receiver = handles.get("gallery", {}).get("item_id")
    if receiver is None:
        own["_open_in_gallery"].visible = False
        return
    own["_open_in_gallery"].click(send_to_gallery, [own["_output_pick"]], [receiver, tabs],
                                  **PRIVATE)
