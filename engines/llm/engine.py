"""Language-model engine: chat with the model's own template, plain completion, and fill in the
middle, streamed token by token with a cancel check before every step.

  params = LLMParams(messages=(ChatMessage("user", "Hi"),), max_new_tokens=64, seed=1)
  for chunk in engine.stream(params, cancel, stats): ...     # UI, API streaming
  result = engine.generate(params, on_progress, cancel)        # tasks, queue

The backend (llama.cpp for GGUF files, transformers otherwise) is chosen in load(); see
engines/llm/backends.py. Where models come from: engines/llm/catalog.py.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Iterator

from engines.base import (Cancelled, CancelToken, EngineError, ParamError, Progress, ProgressCallback,
                          check_int, check_range, no_progress)
from engines.llm.catalog import EMBEDDED_ID, ModelSource, resolve

MAX_MESSAGE_CHARS = 32_000  # one message; longer text is refused before tokenizing
MAX_MESSAGES = 500
ROLES = ("system", "user", "assistant")
FIM_TOKENS = (  # (prefix, suffix, middle) spellings used by code models, PSM order
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, DeepSeek-style
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    ("<PRE>", "<SUF>", "<MID>"),  # Code Llama
)
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # no template: ChatML


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class LLMParams:
    """One request. Chat when `messages` is given; plain completion with `prompt`; fill in the
    middle with `prompt` + `suffix`. Validated on construction: ValueError names the field."""
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    suffix: str | None = None
    system_prompt: str = ""  # placed first when the messages have no system message
    continue_last: bool = False  # extend the final assistant message instead of a new reply
    max_new_tokens: int = 512
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    top_k: int = 40  # 0 = off
    repetition_penalty: float = 1.1  # 1 = off
    seed: int | None = None  # None = a random seed, reported in the stats
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.messages) == (self.prompt is not None):
            raise ValueError("give either `messages` (chat) or `prompt` (completion), not both or neither")
        if len(self.messages) > MAX_MESSAGES:
            raise ParamError("messages", f"`messages` holds {len(self.messages)} messages; the limit is {MAX_MESSAGES}")
        for index, message in enumerate(self.messages):
            if not isinstance(message, ChatMessage) or message.role not in ROLES:
                raise ParamError("messages", f"`messages[{index}]` must have a role in {ROLES}, got {message!r}")
            _check_text(f"messages[{index}].content", message.content)
        if self.messages and not self.messages[-1].content.strip() and not self.continue_last:
            raise ValueError("the message is empty: type something to send")
        if self.continue_last and (not self.messages or self.messages[-1].role != "assistant"):
            raise ParamError("continue_last", "`continue_last` needs the messages to end with an assistant message")
        if self.prompt is not None:
            _check_text("prompt", self.prompt)
            if not self.prompt and not self.suffix:
                raise ParamError("prompt", "`prompt` is empty")
        if self.suffix is not None:
            if self.prompt is None:
                raise ParamError("suffix", "`suffix` needs a `prompt` (fill in the middle)")
            _check_text("suffix", self.suffix)
        _check_text("system_prompt", self.system_prompt)
        check_int("max_new_tokens", self.max_new_tokens, 1, 8192)
        check_range("temperature", self.temperature, 0.0, 2.0)
        check_range("top_p", self.top_p, 0.01, 1.0)
        check_int("top_k", self.top_k, 0, 1000)
        check_range("repetition_penalty", self.repetition_penalty, 1.0, 2.0)
        if self.seed is not None:
            check_int("seed", self.seed, 0, 2**32 - 1)
        if not isinstance(self.stop, tuple) or len(self.stop) > 8 or not all(
                isinstance(s, str) and 0 < len(s) <= 200 for s in self.stop):
            raise ParamError("stop", f"`stop` must be up to 8 non-empty strings, got {self.stop!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LLMParams":
        """From JSON-able values (tasks, queue, API): messages as [{"role", "content"}]."""
        if not isinstance(data, dict):
            raise ValueError(f"parameters must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}")
        values = dict(data)
        messages = values.get("messages") or ()
        if not isinstance(messages, (list, tuple)):
            raise ParamError("messages", f"`messages` must be a list, got {type(messages).__name__}")
        parsed = []
        for index, m in enumerate(messages):
            if isinstance(m, ChatMessage):
                parsed.append(m)
            elif isinstance(m, dict) and set(m) >= {"role", "content"}:
                parsed.append(ChatMessage(str(m["role"]), m["content"]))
            else:
                raise ParamError("messages", f"`messages[{index}]` must be an object with role and content")
        values["messages"] = tuple(parsed)
        stop = values.get("stop") or ()
        values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["messages"] = [asdict(m) for m in self.messages]
        data["stop"] = list(self.stop)
        return data

    def sampling_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                               "repetition_penalty", "seed")}


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"`{name}` must be text, got {type(value).__name__}")
    if len(value) > MAX_MESSAGE_CHARS:
        raise ValueError(f"`{name}` is {len(value):,} characters long; the limit is "
                         f"{MAX_MESSAGE_CHARS:,}")


@dataclass
class GenerationStats:
    """Filled in while a stream runs; final once the stream has ended."""
    model: str = ""
    backend: str = ""
    seed: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""  # stop | length | cancelled
    ttft_s: float | None = None  # request start to first token
    duration_s: float = 0.0
    tokens_per_s: float = 0.0  # decode speed, after the first token
    trimmed_messages: int = 0  # oldest messages left out to fit the context window
    cached_tokens: int = 0  # prompt tokens whose keys/values were kept from the last request
    context_length: int = 0
    fim: bool = False  # True when the model's own fill-in-the-middle tokens were used

    def as_params(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class GenerationResult:
    text: str
    stats: GenerationStats = field(default_factory=GenerationStats)


@dataclass(frozen=True)
class Prepared:
    prompt_ids: list[int]
    trimmed_messages: int
    fim: bool


def render_template(template: str | None, messages: list[dict], bos: str, eos: str,
                    add_generation_prompt: bool) -> str:
    """The model's own Jinja chat template, rendered the way transformers does (sandboxed)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template or CHATML).render(
            messages=messages, bos_token=bos, eos_token=eos,
            add_generation_prompt=add_generation_prompt)
    except TemplateError as error:
        raise ValueError(f"the model's chat template refused these messages: {error}") from error


class LLMEngine:
    kind = "llm"

    def __init__(self, model_id: str = EMBEDDED_ID, device: str = "cpu",
                 context_length: int | None = None) -> None:
        self.model_id = model_id
        self.device = device
        self.requested_context = context_length  # None: the backend's default (4096 or less)
        self.source: ModelSource = resolve(model_id)  # cheap; ValueError for an unknown id
        self._backend = None
        self.load_seconds = 0.0

    # ------------------------------------------------------------ lifecycle
    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def load(self) -> None:
        if self._backend is None:
            from engines.llm.backends import open_backend

            try:
                self._backend = open_backend(self.source, self.device, self.requested_context)
            except ValueError as error:  # a bad file found at load time
                raise EngineError(str(error)) from error

    def unload(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def memory_bytes(self) -> int:
        return self._backend.memory_bytes() if self._backend else 0

    @property
    def backend(self):
        self.load()
        return self._backend

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def context_length(self) -> int:
        return self.backend.context_length

    def fim_tokens(self) -> tuple[str, str, str] | None:
        for names in FIM_TOKENS:
            if all(self.backend.single_token(n) is not None for n in names):
                return names
        return None

    def count_tokens(self, text: str) -> int:
        return len(self.backend.tokenize(text, special=True))

    # ------------------------------------------------------------ prompts
    def render_chat(self, params: LLMParams, messages: list[ChatMessage]) -> str:
        listed = [{"role": m.role, "content": m.content} for m in messages]
        if params.system_prompt.strip() and not any(m["role"] == "system" for m in listed):
            listed.insert(0, {"role": "system", "content": params.system_prompt})
        b = self.backend
        if not params.continue_last:
            return render_template(b.chat_template, listed, b.bos_token, b.eos_token, True)
        # Continue: render the final assistant message as if complete, then cut after its text.
        text = render_template(b.chat_template, listed, b.bos_token, b.eos_token, False)
        last = listed[-1]["content"]
        if not last:
            return render_template(b.chat_template, listed[:-1], b.bos_token, b.eos_token, True)
        return text[:text.rfind(last) + len(last)]

    def prepare(self, params: LLMParams) -> Prepared:
        """Prompt tokens that fit the context with max_new_tokens reserved. Chat drops the oldest
        messages first (the system prompt and the last message always stay)."""
        budget = self.context_length - params.max_new_tokens
        if budget < 16:
            raise ParamError("max_new_tokens", f"`max_new_tokens` is {params.max_new_tokens}, which leaves no room for "
                             f"the prompt in this model's context of {self.context_length} tokens")
        tokenize = self.backend.tokenize
        if params.prompt is not None:
            fim = params.suffix is not None and self.fim_tokens()
            if fim:
                pre, suf, mid = fim
                ids = (tokenize(pre) + tokenize(params.prompt, special=False) + tokenize(suf) +
                       tokenize(params.suffix, special=False) + tokenize(mid))
            elif params.suffix is not None:  # no FIM tokens: ask for the middle in words
                return self.prepare(LLMParams(**{**params.__dict__, "prompt": None, "suffix": None,
                                                 "messages": (fim_instruction(params.prompt, params.suffix),)}))
            else:
                ids = tokenize(params.prompt)
            if len(ids) > budget:
                raise ValueError(f"the prompt is {len(ids)} tokens; with max_new_tokens "
                                 f"{params.max_new_tokens} this model's context holds {budget}")
            return Prepared(ids, 0, bool(fim))
        messages = list(params.messages)
        keep_system = [m for m in messages[:1] if m.role == "system"]
        rest = messages[len(keep_system):]
        dropped = 0
        while True:
            ids = tokenize(self.render_chat(params, keep_system + rest))
            if len(ids) <= budget:
                return Prepared(ids, dropped, False)
            if len(rest) <= 1:
                raise ValueError(f"the message is too long: {len(ids)} tokens, but this model's "
                                 f"context holds {budget} with max_new_tokens {params.max_new_tokens} "
                                 "reserved; shorten it or lower max_new_tokens")
            # Drop the oldest turn; never start on an assistant reply.
            rest, dropped = rest[1:], dropped + 1
            while len(rest) > 1 and rest[0].role == "assistant":
                rest, dropped = rest[1:], dropped + 1

    # ------------------------------------------------------------ generation
    def stream(self, params: LLMParams, cancel: CancelToken | None = None,
               stats: GenerationStats | None = None) -> Iterator[str]:
        """Text chunks as they are sampled. Ends quietly on Stop (stats.finish_reason =
        "cancelled"), on an end token or a stop string ("stop"), or at max_new_tokens ("length")."""
        from engines.llm.backends import Sampling

        cancel = cancel or CancelToken()
        stats = stats if stats is not None else GenerationStats()
        started = time.perf_counter()
        prepared = self.prepare(params)
        seed = params.seed if params.seed is not None else random.randrange(2**32)
        stats.__dict__.update(model=self.model_id, backend=self.backend.name, seed=seed,
                              prompt_tokens=len(prepared.prompt_ids), fim=prepared.fim,
                              trimmed_messages=prepared.trimmed_messages,
                              context_length=self.context_length, finish_reason="length")
        sampling = Sampling(params.temperature, params.top_p, params.top_k,
                            params.repetition_penalty, seed, params.max_new_tokens)
        decoder, pending, first_at = self.backend.decoder(), "", None
        tokens = self.backend.tokens(prepared.prompt_ids, sampling, cancel)
        try:
            hit = False
            for token in tokens:
                if first_at is None:
                    first_at = time.perf_counter()
                    stats.ttft_s = first_at - started
                    stats.cached_tokens = getattr(self.backend, "reused_tokens", 0)
                if self.backend.is_end(token):
                    stats.finish_reason = "stop"
                    break
                stats.completion_tokens += 1
                pending += decoder.push(token)
                ready, pending, hit = split_at_stop(pending, params.stop)
                if ready:
                    yield ready
                if hit:
                    stats.finish_reason = "stop"
                    break
            if not hit:
                ready = split_at_stop(pending + decoder.flush(), params.stop, final=True)[0]
                if ready:
                    yield ready
        except Cancelled:
            stats.finish_reason = "cancelled"
        finally:
            tokens.close()
            stats.duration_s = time.perf_counter() - started
            if first_at is not None and stats.completion_tokens > 1:
                stats.tokens_per_s = (stats.completion_tokens - 1) / max(1e-9, time.perf_counter() - first_at)

    def generate(self, params: LLMParams, on_progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> GenerationResult:
        """The whole reply; raises Cancelled on Stop (nothing to save)."""
        on_progress = on_progress or no_progress
        stats, parts = GenerationStats(), []
        for chunk in self.stream(params, cancel, stats):
            parts.append(chunk)
            on_progress(Progress(stats.completion_tokens, params.max_new_tokens,
                                 f"{stats.completion_tokens} tokens", text="".join(parts)))
        if stats.finish_reason == "cancelled":
            raise Cancelled()
        return GenerationResult("".join(parts), stats)


def fim_instruction(prefix: str, suffix: str) -> ChatMessage:
    """For models without FIM tokens: ask for the missing middle in words."""
    return ChatMessage("user", (
        "Fill in the code at <CURSOR>. Reply with only the code that belongs at <CURSOR>, with no "
        f"explanation and no code fences.\n\n{prefix}<CURSOR>{suffix}"))


def split_at_stop(text: str, stops: tuple[str, ...], final: bool = False) -> tuple[str, str, bool]:
    """(text safe to emit, text held back because it may begin a stop string, stop found)."""
    hits = [text.find(s) for s in stops if s in text]
    if hits:
        return text[:min(hits)], "", True
    keep = 0
    if not final:
        for s in stops:
            for length in range(min(len(text), len(s) - 1), 0, -1):
                if text.endswith(s[:length]):
                    keep = max(keep, length)
                    break
    return (text[:-keep], text[-keep:], False) if keep else (text, "", False)
