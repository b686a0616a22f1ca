"""The inference engine: one resource interface (LLMEngine), a vLLM implementation and a scripted one,
and the call cache every LLM stage goes through."""
