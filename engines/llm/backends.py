"""The two ways a language model runs here, behind one small interface:

  LlamaCppBackend     GGUF files through llama.cpp (llama-cpp-python): ~4x faster on CPU.
  TransformersBackend transformers folders and hub ids, and GGUF files when llama.cpp is not
                      installed (transformers dequantises them to float32).

Both give: tokenize, the chat template and special tokens, and `tokens(prompt_ids, sampling,
cancel)`, a generator of token ids that checks `cancel` before each step (prompt processing
included, in chunks), so Stop costs at most one token step. Libraries are imported in load().
"""
from __future__ import annotations

import codecs
import logging
import os
from pathlib import Path
from typing import Iterator

from engines.base import CancelToken, EngineError
from engines.llm.catalog import ModelSource, check_gguf_file, verify_sha256
from engines.llm.llama_probe import llama_cpp_crash
from engines.llm.sampling import Sampling, sample_token
from engines.llm.settle import ReplySettler, shared_prefix
from engines.llm.threads import (  # noqa: F401  (cpu_threads: imported from here elsewhere)
    SMALL_MODEL_BYTES, AdaptiveThreads, cpu_threads, decode_threads, import_llama_cpp)

DEFAULT_CONTEXT = 4096  # tokens; capped by what the model was trained on
PROMPT_CHUNK = 256  # prompt tokens evaluated between two cancel checks

log = logging.getLogger(__name__)


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class Utf8Decoder:
    """Token byte pieces to text, holding back a split multi-byte character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class Backend:
    name = "?"
    context_length: int
    chat_template: str | None
    bos_token: str
    eos_token: str

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        raise NotImplementedError

    def single_token(self, text: str) -> int | None:
        """The id of `text` if the vocabulary has it as one special token (FIM markers)."""
        ids = self.tokenize(text, special=True)
        return ids[0] if len(ids) == 1 else None

    def is_end(self, token: int) -> bool:
        raise NotImplementedError

    def decoder(self) -> "TokenDecoder":
        raise NotImplementedError

    def tokens(self, prompt: list[int], sampling: Sampling, cancel: CancelToken) -> Iterator[int]:
        raise NotImplementedError

    def memory_bytes(self) -> int:
        return 0

    def close(self) -> None:
        pass


class TokenDecoder:
    """Feeds generated ids, returns the new text each time (never half a character)."""

    def push(self, token: int) -> str:
        raise NotImplementedError

    def flush(self) -> str:
        return ""


# ---------------------------------------------------------------- llama.cpp
class LlamaCppBackend(Backend):
    name = "llama.cpp"

    def __init__(self, source: ModelSource, context_length: int | None = None) -> None:
        check_gguf_file(source.path)
        if source.sha256:
            verify_sha256(source.path, source.sha256)
        self.context_length = context_length or DEFAULT_CONTEXT
        self._evaluated: list[int] = []  # prompt tokens whose keys/values are in the cache
        self.reused_tokens = 0  # how many the last generation did not evaluate again
        self._texts: list[str | None] | None = None  # each token's text, for constrained decoding
        self.llm = self._open(source.path)
        self.threads = AdaptiveThreads(self._lib, self.llm.ctx, source.path.stat().st_size)
        self._settler = ReplySettler(self)  # the last reply into the cache, while idle (settle.py)
        meta = self.llm.metadata  # GGUF key-values, as strings
        trained = int(meta.get(f"{meta.get('general.architecture')}.context_length", 0) or 0)
        if 0 < trained < self.context_length:  # never more context than the model was trained on
            self.llm.close()
            self.context_length = trained
            self.llm = self._open(source.path)
            self.threads = AdaptiveThreads(self._lib, self.llm.ctx, source.path.stat().st_size)
        self.chat_template = meta.get("tokenizer.chat_template")
        self.bos_token = self._piece(self.llm.token_bos())
        self.eos_token = self._piece(self.llm.token_eos())
        self._size = source.path.stat().st_size

    def _open(self, path: Path):
        llama_cpp = import_llama_cpp()
        self._lib = llama_cpp.llama_cpp  # the C functions (llama_set_n_threads)
        try:
            return llama_cpp.Llama(
                model_path=str(path), n_ctx=self.context_length, n_batch=PROMPT_CHUNK,
                n_threads=decode_threads(path.stat().st_size), n_threads_batch=cpu_threads(),
                verbose=False)
        except (ValueError, RuntimeError) as error:
            raise EngineError(f"llama.cpp could not load {path.name}: {error}") from error

    def _piece(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def is_end(self, token: int) -> bool:
        from llama_cpp import llama_cpp as lib

        return bool(lib.llama_vocab_is_eog(self.llm._model.vocab, token)) or token == self.llm.token_eos()

    def decoder(self) -> TokenDecoder:
        llm, utf8 = self.llm, Utf8Decoder()

        class _Decoder(TokenDecoder):
            def push(self, token: int) -> str:
                return utf8.feed(llm.detokenize([token]))

            def flush(self) -> str:
                return utf8.flush()

        return _Decoder()

    def _prime(self, body: list[int], cancel: CancelToken) -> None:
        """Evaluate `body` (the prompt but its last token), reusing the cache where it can."""
        llm = self.llm
        # 1. Keep the cached keys/values of every token this prompt shares with the last prompt
        #    (a chat's next turn starts with the previous turns). Prompts are evaluated in
        #    batches of two tokens or more, never one: on the CPU a token's keys/values are then
        #    the same whatever the batch around it, so a kept token holds exactly what a fresh
        #    evaluation computes and the same seed still gives the same text (tested). Generated
        #    tokens were evaluated one at a time, which rounds differently: they are not kept,
        #    but evaluated again as a batch once the reply has ended (settle.py).
        # the rest is at least a batch of two
        keep = min(shared_prefix(self._evaluated, body), max(0, len(body) - 2))
        if keep and llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.n_tokens = keep
        else:
            keep = 0
            llm.reset()
        self._evaluated = body[:keep]
        self.reused_tokens = keep
        # 2. The rest of the prompt, a chunk at a time, checking for Stop between chunks.
        for start, end in _batches(keep, len(body)):
            cancel.raise_if_cancelled()
            llm.eval(body[start:end])
            self._evaluated = body[:end]
        cancel.raise_if_cancelled()

    def stepper(self, prompt: list[int], cancel: CancelToken) -> "Stepper":
        """For decoding loops of our own (constrained output, logprobs): logits in, tokens out."""
        self._settler.finish(prompt)
        self.threads.before_prompt()
        self._prime(prompt[:-1], cancel)
        from engines.llm.steppers import LlamaStepper

        return LlamaStepper(self.llm, prompt[-1:], on_step=self.threads.tick)

    def token_texts(self) -> list[str | None]:
        if self._texts is None:
            from engines.llm.steppers import text_or_none

            self._texts = [text_or_none(self.llm.detokenize([i])) for i in range(self.llm.n_vocab())]
        return self._texts

    def tokens(self, prompt: list[int], sampling: Sampling, cancel: CancelToken) -> Iterator[int]:
        llm = self.llm
        self._settler.finish(prompt)
        llm.set_seed(sampling.seed)
        self.threads.before_prompt()  # every core when the machine is idle (threads.py)
        self._prime(prompt[:-1], cancel)  # the last token goes through generate(), which samples after it
        # 3. One token per step; the caller stops iterating to stop computing.
        generator = llm.generate(
            prompt[-1:], reset=False, temp=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, min_p=0.0, repeat_penalty=sampling.repetition_penalty)
        reply, ended = [], True
        try:
            for count, token in enumerate(generator):
                reply.append(token)
                yield token
                if count + 1 >= sampling.max_new_tokens or self.is_end(token):
                    return
                cancel.raise_if_cancelled()
                self.threads.tick()
        except BaseException as error:  # Stop or a failure: no next turn will start with this reply
            ended = isinstance(error, GeneratorExit)
            raise
        finally:
            generator.close()
            if ended:  # the caller has the reply now; the next turn will start with it
                self._settler.start(prompt[:-1], prompt[-1:] + reply)

    def memory_bytes(self) -> int:
        return self._size

    def close(self) -> None:
        if getattr(self, "_settler", None) is not None:
            self._settler.finish([])
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()


def _batches(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) in PROMPT_CHUNK pieces, the last one never a single token (see _prime)."""
    bounds = list(range(start, end, PROMPT_CHUNK)) + [end]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= 1
    return list(zip(bounds, bounds[1:]))


# ---------------------------------------------------------------- transformers
class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, source: ModelSource, device: str = "cpu",
                 context_length: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(cpu_threads())
        self.device = device
        if source.format == "gguf":
            check_gguf_file(source.path)
            if source.sha256:
                verify_sha256(source.path, source.sha256)
            where, extra = str(source.path.parent), {"gguf_file": source.path.name}
        else:
            where = str(source.path) if source.path else source.hub_id
            extra = {"local_files_only": source.path is not None or
                     os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true")}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where, **extra)
            self.model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise EngineError(f"transformers could not load {source.model_id!r}: {error}") from error
        self.model.to(device).eval()
        trained = getattr(self.model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT
        self.context_length = min(context_length or DEFAULT_CONTEXT, trained)
        self.chat_template = self.tokenizer.chat_template
        self.bos_token = self.tokenizer.bos_token or ""
        self.eos_token = self.tokenizer.eos_token or ""
        ends = {self.tokenizer.eos_token_id}
        generation_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ends |= set(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
            if name in self.tokenizer.get_vocab():
                ends.add(self.tokenizer.convert_tokens_to_ids(name))
        self._ends = {e for e in ends if e is not None}

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        if special:
            return self.tokenizer.encode(text, add_special_tokens=False)
        # Special-looking text typed by a user stays plain text.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def is_end(self, token: int) -> bool:
        return token in self._ends

    def decoder(self) -> TokenDecoder:
        tokenizer = self.tokenizer

        class _Decoder(TokenDecoder):
            # Decoding the whole reply each time is the only exact way for every tokenizer
            # (SentencePiece spaces, byte-level BPE); replies are short enough for it.
            def __init__(self) -> None:
                self.ids: list[int] = []
                self.sent = 0

            def push(self, token: int) -> str:
                self.ids.append(token)
                text = tokenizer.decode(self.ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    return ""
                new, self.sent = text[self.sent:], len(text)
                return new

        return _Decoder()

    def tokens(self, prompt: list[int], sampling: Sampling, cancel: CancelToken) -> Iterator[int]:
        import torch

        generator = torch.Generator(device="cpu").manual_seed(sampling.seed)
        history = list(prompt)
        past = None
        with torch.inference_mode():
            # 1. The prompt in chunks, a cancel check between them; keep the last logits.
            for start in range(0, len(prompt), PROMPT_CHUNK):
                cancel.raise_if_cancelled()
                ids = torch.tensor([prompt[start:start + PROMPT_CHUNK]], device=self.device)
                out = self.model(input_ids=ids, cache=past, use_cache=True, logits_to_keep=1)
                past = out.cache
            # 2. Sample, yield, feed the token back.
            for count in range(sampling.max_new_tokens):
                token = sample_token(out.logits[0, -1].float().cpu(), history, sampling, generator)
                history.append(token)
                yield token
                if count + 1 >= sampling.max_new_tokens or self.is_end(token):
                    return
                cancel.raise_if_cancelled()
                ids = torch.tensor([[token]], device=self.device)
                out = self.model(input_ids=ids, cache=past, use_cache=True)
                past = out.cache

    def stepper(self, prompt: list[int], cancel: CancelToken) -> "Stepper":
        from engines.llm.steppers import TorchStepper

        return TorchStepper(self, prompt, cancel)

    def token_texts(self) -> list[str | None]:
        """Each token's text as it reads mid-sentence: decode(anchor + token) minus decode(anchor),
        because decoding one SentencePiece token alone drops its leading space."""
        if getattr(self, "_texts", None) is None:
            tokenizer = self.tokenizer
            anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
            base = tokenizer.decode(anchor)
            texts: list[str | None] = []
            for i in range(len(tokenizer)):
                text = tokenizer.decode(anchor + [i], skip_special_tokens=True)
                whole = text.startswith(base) and "\ufffd" not in text
                texts.append(text[len(base):] if whole else None)
            self._texts = texts
        return self._texts

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def close(self) -> None:
        self.model = None
        self.tokenizer = None


def open_backend(source: ModelSource, device: str, context_length: int | None = None) -> Backend:
    """llama.cpp for GGUF files when it is installed (and the device is the CPU), else
    transformers. GENSTUDIO_LLM_BACKEND=transformers forces the latter."""
    forced = os.environ.get("GENSTUDIO_LLM_BACKEND", "")
    if forced not in ("", "llama.cpp", "transformers"):
        raise EngineError(f"GENSTUDIO_LLM_BACKEND must be llama.cpp or transformers, got {forced!r}")
    use_llama = source.format == "gguf" and forced != "transformers" and llama_cpp_available()
    if forced == "llama.cpp" and not use_llama:
        raise EngineError("GENSTUDIO_LLM_BACKEND=llama.cpp, but llama-cpp-python is not installed "
                          "or the model is not a GGUF file")
    if use_llama:
        check_gguf_file(source.path)  # not a GGUF: that message, not a probe's crash
        if crash := llama_cpp_crash(source.path, PROMPT_CHUNK):  # llama_probe.py says why
            if forced == "llama.cpp":
                raise EngineError(crash)
            log.warning("%s; running %s on transformers instead", crash, source.model_id)
            use_llama = False
    if use_llama:
        return LlamaCppBackend(source, context_length)
    return TransformersBackend(source, device, context_length)
