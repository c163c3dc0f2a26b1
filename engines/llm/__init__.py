"""Language-model engine: `engine.py` (LLMEngine, params, chat messages), `backends.py`
(llama.cpp for GGUF, transformers otherwise), `catalog.py` (which models exist and where).

Empty on purpose: importing a submodule (e.g. `catalog`) must not import torch."""
