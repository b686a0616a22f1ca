"""What an engine asks of a Hugging Face tokenizer: its special tokens, chat-templated prompt sizes, and cutting
a text to a token budget (the in-process vLLM engine, and the OpenAI-compatible one when a tokenizer is named)."""

from __future__ import annotations

from typing import Any

from arhn_pipeline.engine.base import LLMRequest


def special_tokens(tok: Any) -> tuple[str, ...]:
    """Every special token of the tokenizer as text: the declared ones and the added tokens marked special."""
    special = set(tok.all_special_tokens)
    special.update(t.content for t in tok.added_tokens_decoder.values() if t.special)
    return tuple(sorted(special))


def count_tokens(tok: Any, requests: list[LLMRequest]) -> list[int]:
    """Prompt tokens of each request with the model's chat template applied."""
    counts = []
    for r in requests:
        ids = tok.apply_chat_template(r.chat(), tokenize=True, add_generation_prompt=True)
        counts.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return counts


def truncate(tok: Any, text: str, max_tokens: int) -> tuple[str, bool]:
    """`text` cut to at most `max_tokens` tokens, and whether it was cut."""
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text, False
    return tok.decode(ids[:max_tokens]), True
