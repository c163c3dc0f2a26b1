"""Text tasks: "chat" (one reply to a conversation) and "code" (write, complete, explain, fix,
optionally run & fix).

They run in a queue worker like every task; the text streams to callers (the Chat and Code tabs,
the OpenAI API) through the job's progress (`Progress.text`, the reply so far), and a cancel
stops the engine within one token.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from engines.base import CancelToken, ParamError, ProgressCallback
from studio.models import check_llm_model
from studio.tasks import TaskResult, TaskSpec, register

if TYPE_CHECKING:
    from engines.llm.engine import GenerationStats, LLMParams
    from studio.context import StudioContext

DEFAULT_MODEL = "smollm2-135m-instruct"
CODE_MODES = ("write", "complete", "explain", "fix")
LANGUAGES = ("python", "javascript", "typescript", "bash", "c", "cpp", "go", "rust", "java", "sql",
             "html", "css")
MAX_FIX_ROUNDS = 5


# ---------------------------------------------------------------- parameters
def llm_params(params: dict[str, Any]) -> tuple[str, "LLMParams"]:
    """Split a JSON-able request into (model id, LLMParams); ValueError names a bad field."""
    from engines.llm.engine import LLMParams
    from engines.llm.catalog import resolve

    values = dict(params)
    model = values.pop("model", None) or DEFAULT_MODEL
    resolve(model)  # unknown id or a file that is not GGUF: a clear error before any loading
    return model, LLMParams.from_dict(values)


# ---------------------------------------------------------------- streaming
def stream_reply(ctx: "StudioContext", model: str, params: "LLMParams", cancel: CancelToken,
                 stats: "GenerationStats") -> Iterator[str]:
    """The reply so far, after each chunk, on the caller's thread (a queue worker): the device
    lock is held from the prompt check to the last token. `stats` is final once it ends."""
    text = ""
    with ctx.engines.use("llm", model) as engine:
        engine.prepare(params)  # too long for the context: fail before streaming
        for chunk in engine.stream(params, cancel, stats):
            text += chunk
            yield text


def reply_params(params: "LLMParams", stats: "GenerationStats", **extra: Any) -> dict[str, Any]:
    """What a gallery text item records about its generation (tokens/s included)."""
    data = params.sampling_dict()
    data.update(stats.as_params())
    if params.system_prompt:
        data["system_prompt"] = params.system_prompt
    data.update(extra)
    return data


def record_reply(ctx: "StudioContext", task: str, model: str, prompt: str, params: "LLMParams",
                 text: str, stats: "GenerationStats", tags: tuple[str, ...] = (), **extra: Any):
    return ctx.gallery.add_text(
        text, task=task, engine="llm", model=model, prompt=prompt,
        params=reply_params(params, stats, **extra), seed=stats.seed,
        duration_s=round(stats.duration_s, 3), tags=tags, job_id=ctx.job_id)


def last_user_message(params: "LLMParams") -> str:
    users = [m.content for m in params.messages if m.role == "user"]
    return users[-1] if users else (params.prompt or "")


# ---------------------------------------------------------------- chat task
def validate_chat(ctx: "StudioContext", params: dict) -> None:
    # only the studio's own models (studio/models.py), before anything opens the file
    check_llm_model(ctx, params.get("model") or DEFAULT_MODEL)
    llm_params(params)


def run_chat(ctx: "StudioContext", params: dict, on_progress: ProgressCallback,
             cancel: CancelToken) -> TaskResult:
    model, request = llm_params(params)
    with ctx.engines.use("llm", model) as engine:
        result = engine.generate(request, on_progress, cancel)
    item = record_reply(ctx, "chat", model, last_user_message(request), request, result.text,
                        result.stats)
    return TaskResult(item_ids=[item.id], text=result.text, info=result.to_info())


# ---------------------------------------------------------------- code task
@dataclass(frozen=True)
class CodeRequest:
    mode: str  # write | complete | explain | fix
    language: str = "python"
    description: str = ""  # write
    code: str = ""  # explain, fix
    prefix: str = ""  # complete
    suffix: str = ""  # complete
    error: str = ""  # fix: the error message, optional

    def __post_init__(self) -> None:
        if self.mode not in CODE_MODES:
            raise ParamError("mode", f"`mode` must be one of {', '.join(CODE_MODES)}, got {self.mode!r}")
        if self.language not in LANGUAGES:
            raise ParamError("language", f"`language` must be one of {', '.join(LANGUAGES)}, got {self.language!r}")
        needed = {"write": ("description", self.description), "explain": ("code", self.code),
                  "fix": ("code", self.code), "complete": ("prefix", self.prefix + self.suffix)}
        name, value = needed[self.mode]
        if not value.strip():
            raise ParamError(name, f"`{name}` is empty: the {self.mode} mode needs it")


SYSTEM_CODER = "You are a careful senior programmer. Answer precisely and briefly."


def code_llm_params(request: CodeRequest, sampling: dict[str, Any]) -> "LLMParams":
    """The prompt for each mode. Complete uses fill-in-the-middle (the engine picks the model's
    FIM tokens, or asks in words when it has none)."""
    from engines.llm.engine import ChatMessage, LLMParams

    lang = request.language
    if request.mode == "complete":
        return LLMParams(prompt=request.prefix, suffix=request.suffix, **sampling)
    if request.mode == "write":
        ask = (f"Write {lang} code for this task:\n{request.description}\n\nReply with the complete "
               f"code in one ```{lang} code block.")
    elif request.mode == "explain":
        ask = f"Explain what this {lang} code does, step by step:\n```{lang}\n{request.code}\n```"
    else:
        error = f"\nIt fails with this error:\n```\n{request.error.strip()}\n```" if request.error.strip() else ""
        ask = (f"Fix this {lang} code.{error}\n```{lang}\n{request.code}\n```\n\nReply with the "
               f"corrected code in one ```{lang} code block.")
    return LLMParams(messages=(ChatMessage("user", ask),), system_prompt=SYSTEM_CODER, **sampling)


def extract_code(text: str) -> str:
    """The first fenced block of a reply, or the reply itself when it has none."""
    match = re.search(r"```[\w+#.-]*[ \t]*\n(.*?)(?:```|\Z)", text, re.S)
    return (match.group(1) if match else text).strip("\n")


def split_code_params(params: dict) -> tuple[str, CodeRequest, dict, bool, int]:
    values = dict(params)
    model = values.pop("model", None) or DEFAULT_MODEL
    run_and_fix = bool(values.pop("run_and_fix", False))
    rounds = values.pop("rounds", 3)
    request_fields = {k: values.pop(k) for k in list(values) if k in CodeRequest.__dataclass_fields__}
    if "mode" not in request_fields:  # a clear message, not Python's missing-argument TypeError
        raise ParamError("mode", f"`mode` is required: one of {', '.join(CODE_MODES)}")
    request = CodeRequest(**request_fields)
    if run_and_fix and request.language != "python":
        raise ValueError("run & fix runs Python only; pick python as the language")
    if run_and_fix and request.mode not in ("write", "fix"):
        raise ValueError("run & fix needs the write or fix mode")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_FIX_ROUNDS:
        raise ParamError("rounds", f"`rounds` must be a whole number from 1 to {MAX_FIX_ROUNDS}, got {rounds!r}")
    from engines.llm.catalog import resolve

    resolve(model)
    code_llm_params(request, values)  # validates the sampling values
    return model, request, values, run_and_fix, rounds


@dataclass
class CodeRound:
    round: int
    code: str
    reply: str
    run: Any = None  # studio.code_runner.RunResult, when run & fix is on
    stats: Any = None  # engines.llm.GenerationStats


def code_events(ctx: "StudioContext", params: dict,
                cancel: CancelToken | None = None) -> Iterator[tuple[str, int, Any]]:
    """Generate, and with run & fix run the code and feed its error back, round by round.
    Yields ("text", round, reply so far) while streaming and ("round", round, CodeRound) after
    each round. Raises Cancelled on Stop."""
    from engines.base import Cancelled
    from engines.llm.engine import GenerationStats
    from studio.code_runner import check_code_execution, run_python

    cancel = cancel or CancelToken()
    model, request, sampling, run_and_fix, rounds = split_code_params(params)
    if run_and_fix:  # off unless the studio was started with --allow-code-execution
        check_code_execution(ctx.config)
    for number in range(1, (rounds if run_and_fix else 1) + 1):
        stats, reply = GenerationStats(), ""
        for reply in stream_reply(ctx, model, code_llm_params(request, sampling), cancel, stats):
            yield "text", number, reply
        if stats.finish_reason == "cancelled":
            raise Cancelled()
        if request.mode == "explain" or (request.mode == "complete" and stats.fim):
            code = reply
        else:  # a chat reply: the code is in its fenced block, if it used one
            code = extract_code(reply)
        round_ = CodeRound(number, code, reply, stats=stats)
        if run_and_fix:
            round_.run = run_python(code)
        yield "round", number, round_
        if not run_and_fix or round_.run.ok:
            return
        request = CodeRequest("fix", "python", code=code, error=round_.run.error_text())


def record_code(ctx: "StudioContext", params: dict, rounds: list[CodeRound]):
    """One gallery text item for a finished code request: the final code (or explanation)."""
    model, request, sampling, run_and_fix, _ = split_code_params(params)
    prompt = request.description or request.code or (request.prefix + "<CURSOR>" + request.suffix)
    extra: dict[str, Any] = {"mode": request.mode, "language": request.language, "rounds": len(rounds)}
    if run_and_fix:
        extra["runs"] = [r.run.summary() for r in rounds]
    return record_reply(ctx, "code", model, prompt, code_llm_params(request, sampling),
                        rounds[-1].code, rounds[-1].stats, **extra)


def validate_code(ctx: "StudioContext", params: dict) -> None:
    check_llm_model(ctx, params.get("model") or DEFAULT_MODEL)
    if split_code_params(params)[3]:  # run & fix: refused at once when the studio forbids it
        from studio.code_runner import check_code_execution

        check_code_execution(ctx.config)


def run_code(ctx: "StudioContext", params: dict, on_progress: ProgressCallback,
             cancel: CancelToken) -> TaskResult:
    from engines.base import Progress

    rounds: list[CodeRound] = []
    for kind, number, value in code_events(ctx, params, cancel):
        if kind == "text":
            on_progress(Progress(number, params.get("rounds", 1), f"round {number}", text=value))
        else:
            rounds.append(value)
    item = record_code(ctx, params, rounds)
    info = {"rounds": len(rounds), "ok": [r.run.ok for r in rounds if r.run is not None]}
    return TaskResult(item_ids=[item.id], text=rounds[-1].code, info=info)


register(TaskSpec("chat", "llm", validate_chat, run_chat, "One reply from a language model"))
register(TaskSpec("code", "llm", validate_code, run_code,
                  "Write, complete, explain or fix code; optionally run & fix Python"))
