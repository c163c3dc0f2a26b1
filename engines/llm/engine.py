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
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from engines.base import (Cancelled, CancelToken, EngineError, ParamError, Progress, ProgressCallback,
                          no_progress)
from engines.llm import tools as tool_format
from engines.llm.catalog import EMBEDDED_ID, ModelSource, resolve
from engines.llm.params import ChatMessage, LLMParams, ToolCall  # noqa: F401 (the engine's API)
from engines.llm.prompts import (CHATML, clean_middle, fim_messages, middle_stops,  # noqa: F401
                                 render_template, split_at_stop)

FIM_TOKENS = (  # (prefix, suffix, middle) spellings used by code models, PSM order
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, DeepSeek-style
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    ("<PRE>", "<SUF>", "<MID>"),  # Code Llama
)


@dataclass
class GenerationStats:
    """Filled in while a stream runs; final once the stream has ended."""
    model: str = ""
    backend: str = ""
    seed: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""  # stop | length | tool_calls | cancelled
    ttft_s: float | None = None  # request start to first token
    duration_s: float = 0.0
    tokens_per_s: float = 0.0  # decode speed, after the first token
    trimmed_messages: int = 0  # oldest messages left out to fit the context window
    cached_tokens: int = 0  # prompt tokens whose keys/values were kept from the last request
    context_length: int = 0
    fim: bool = False  # True when the model's own fill-in-the-middle tokens were used
    constrained: bool = False  # True when a grammar (JSON schema, tools) shaped the reply
    tool_calls: list = field(default_factory=list)  # [{"id", "name", "arguments"}] read from the reply
    logprobs: list | None = None  # engines.llm.guided.TokenLogprob per token, when asked for

    def as_params(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("tool_calls", "logprobs")}
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in data.items()}


@dataclass
class GenerationResult:
    text: str
    stats: GenerationStats = field(default_factory=GenerationStats)
    choices: list["GenerationResult"] = field(default_factory=list)  # all n choices (this one first)

    @property
    def tool_calls(self) -> list[dict]:
        return self.stats.tool_calls

    def to_info(self) -> dict[str, Any]:
        """JSON-able result details (a task's `info`): the stats, plus per choice its text,
        finish reason, tool calls and log-probabilities ([token, logprob, [[token, logprob]...]])."""
        info = self.stats.as_params()
        info["choices"] = [{
            "text": c.text, "finish_reason": c.stats.finish_reason, "tool_calls": c.stats.tool_calls,
            "logprobs": None if c.stats.logprobs is None else
            [[t.token, round(t.logprob, 5), [[a, round(b, 5)] for a, b in t.top]] for t in c.stats.logprobs],
            "completion_tokens": c.stats.completion_tokens} for c in (self.choices or [self])]
        return info


@dataclass(frozen=True)
class Prepared:
    prompt_ids: list[int]
    trimmed_messages: int
    fim: bool
    stop: tuple[str, ...] = ()  # stop strings the prompt adds (fill-in-the-middle in words)
    infill: bool = False  # the middle was asked for in words: clean it with clean_middle


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
        b = self.backend
        knows_tools = tool_format.template_knows_tools(b.chat_template)
        listed = [tool_format.message_for_template(m, knows_tools) for m in messages]
        system = params.system_prompt.strip()
        use_tools = tool_format.calls_tools(params.tools, params.tool_choice)
        if use_tools and not knows_tools:  # teach the call format in the system message
            system = "\n\n".join(filter(None, [system, tool_format.tools_system_text(params.tools)]))
        if listed and listed[0]["role"] == "system":
            if use_tools and not knows_tools:
                listed[0] = {**listed[0], "content": listed[0]["content"] + "\n\n" +
                             tool_format.tools_system_text(params.tools)}
        elif system:
            listed.insert(0, {"role": "system", "content": system})
        tools = list(params.tools) if use_tools and knows_tools else None

        def render(items: list[dict], generation_prompt: bool) -> str:
            return render_template(b.chat_template, items, b.bos_token, b.eos_token, generation_prompt, tools)

        if not params.continue_last:
            return render(listed, True)
        # Continue: render the final assistant message as if complete, then cut after its text.
        text = render(listed, False)
        last = listed[-1]["content"]
        if not last:
            return render(listed[:-1], True)
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
            elif params.suffix is not None:  # no FIM tokens: the model continues the prefix in a chat
                messages, stops = fim_messages(params.prompt, params.suffix)
                chat = replace(params, prompt=None, suffix=None, continue_last=True,
                               messages=tuple(ChatMessage(role, text) for role, text in messages))
                return replace(self.prepare(chat), stop=stops, infill=True)
            else:
                ids = tokenize(params.prompt)
            if len(ids) > budget:
                raise ParamError("prompt", f"the prompt is {len(ids)} tokens; with max_new_tokens "
                                 f"{params.max_new_tokens} this model's context holds {budget}")
            return Prepared(ids, 0, bool(fim), stop=middle_stops(params.suffix) if fim else ())
        messages = list(params.messages)
        keep_system = [m for m in messages[:1] if m.role == "system"]
        rest = messages[len(keep_system):]
        dropped = 0
        while True:
            ids = tokenize(self.render_chat(params, keep_system + rest))
            if len(ids) <= budget:
                return Prepared(ids, dropped, False)
            if len(rest) <= 1:
                raise ParamError("messages", f"the message is too long: {len(ids)} tokens, but this model's "
                                 f"context holds {budget} with max_new_tokens {params.max_new_tokens} "
                                 "reserved; shorten it or lower max_new_tokens")
            # Drop the oldest turn; never start on an assistant reply.
            rest, dropped = rest[1:], dropped + 1
            while len(rest) > 1 and rest[0].role == "assistant":
                rest, dropped = rest[1:], dropped + 1

    def _token_source(self, params: LLMParams, prepared: Prepared, sampling, cancel: CancelToken,
                      stats: GenerationStats, outcome: dict) -> Iterator[int]:
        """The backend's own loop, or ours (engines/llm/guided.py) for a grammar or logprobs."""
        if not params.guided:
            return self.backend.tokens(prepared.prompt_ids, sampling, cancel)
        from engines.llm.matcher import Matcher
        from engines.llm.guided import guided_tokens, min_tokens

        node = tool_format.constraint(params.response_format, params.tools, params.tool_choice,
                                      params.parallel_tool_calls)
        matcher = Matcher(node) if node is not None else None
        if matcher is not None:
            needed = min_tokens(self.backend, matcher)
            if needed > params.max_new_tokens:
                raise ParamError("max_new_tokens", f"`max_new_tokens` is {params.max_new_tokens}, but the "
                                 f"shortest reply this schema allows takes {needed} tokens")
            stats.constrained = True
        stats.logprobs = [] if params.logprobs else None
        return guided_tokens(self.backend, prepared.prompt_ids, sampling, cancel, matcher,
                             stats.logprobs, params.top_logprobs, outcome)

    # ------------------------------------------------------------ generation
    def stream(self, params: LLMParams, cancel: CancelToken | None = None,
               stats: GenerationStats | None = None) -> Iterator[str]:
        """Text chunks as they are sampled. Ends quietly on Stop (stats.finish_reason =
        "cancelled"), on an end token, a stop string or a complete constrained value ("stop";
        "tool_calls" when the reply called tools), or at max_new_tokens ("length")."""
        from engines.llm.sampling import Sampling

        cancel = cancel or CancelToken()
        stats = stats if stats is not None else GenerationStats()
        started = time.perf_counter()
        prepared = self.prepare(params)
        stops = params.stop + prepared.stop
        seed = params.seed if params.seed is not None else random.randrange(2**32)
        stats.__dict__.update(model=self.model_id, backend=self.backend.name, seed=seed,
                              prompt_tokens=len(prepared.prompt_ids), fim=prepared.fim,
                              trimmed_messages=prepared.trimmed_messages,
                              context_length=self.context_length, finish_reason="length")
        sampling = Sampling(params.temperature, params.top_p, params.top_k,
                            params.repetition_penalty, seed, params.max_new_tokens)
        outcome: dict = {}
        decoder, pending, first_at, parts = self.backend.decoder(), "", None, []
        tokens = self._token_source(params, prepared, sampling, cancel, stats, outcome)
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
                ready, pending, hit = split_at_stop(pending, stops)
                if ready:
                    parts.append(ready)
                    yield ready
                if hit:
                    stats.finish_reason = "stop"
                    break
            if not hit:
                ready = split_at_stop(pending + decoder.flush(), stops, final=True)[0]
                if ready:
                    parts.append(ready)
                    yield ready
            if outcome.get("complete"):
                stats.finish_reason = "stop"
            if tool_format.calls_tools(params.tools, params.tool_choice):
                stats.tool_calls = tool_format.parse_tool_calls("".join(parts))[1]
                if stats.tool_calls:
                    stats.finish_reason = "tool_calls"
        except Cancelled:
            stats.finish_reason = "cancelled"
        finally:
            tokens.close()
            stats.duration_s = time.perf_counter() - started
            if first_at is not None and stats.completion_tokens > 1:
                stats.tokens_per_s = (stats.completion_tokens - 1) / max(1e-9, time.perf_counter() - first_at)

    def generate(self, params: LLMParams, on_progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> GenerationResult:
        """The whole reply (`choices` holds all n; choice i uses seed + i); raises Cancelled on
        Stop (nothing to save). A middle comes back cleaned (clean_middle)."""
        on_progress = on_progress or no_progress
        results = []
        for index in range(params.n):
            one = replace(params, n=1, seed=None if params.seed is None else (params.seed + index) % 2**32)
            stats, parts = GenerationStats(), []
            for chunk in self.stream(one, cancel, stats):
                parts.append(chunk)
                on_progress(Progress(stats.completion_tokens, params.max_new_tokens,
                                     f"{stats.completion_tokens} tokens", text="".join(parts)))
            if stats.finish_reason == "cancelled":
                raise Cancelled()
            text = "".join(parts)
            if params.suffix is not None:  # FIM tokens or not: only what an editor inserts
                text = clean_middle(text, params.prompt or "", params.suffix)
            results.append(GenerationResult(text, stats))
        first = results[0]
        return GenerationResult(first.text, first.stats, results)
