"""Text from data is only ever text: no query, passage or snippet can be read by a tokenizer as one of the
model's control tokens.

A passage holding `<|im_end|>\n<|im_start|>assistant\n...` would otherwise end the user's turn and speak as
the model. Every occurrence of a special token of the model in use (the list comes from its tokenizer) gets
a WORD JOINER (U+2060, invisible) after its first character: a reader still sees the same text, while the
tokenizer, which matches special tokens as exact strings, no longer finds one. Where no tokenizer is at hand
(a hosted model), the turn markers of common chat templates are treated the same way.
"""

from __future__ import annotations

import re
from functools import lru_cache

WORD_JOINER = "\u2060"

# ChatML, Llama 3, Phi, Qwen (<|...|>) and DeepSeek's full-width form (<｜end▁of▁sentence｜>), with look-alike
# brackets and bars (full-width, small, box-drawing, angle quotes); Gemma turns; Llama 2 / Mistral ([INST], <s>)
_LT, _GT = "<\uff1c\ufe64\u2039\u3008", ">\uff1e\ufe65\u203a\u3009"
_BAR = "|\uff5c\u2502\u01c0\u2223"
_GENERIC = (
    f"[{_LT}][{_BAR}][^{_BAR}{_LT}{_GT}\\s]{{1,40}}[{_BAR}][{_GT}]"
    r"|<(?:start|end)_of_turn>|\[/?INST\]|</?s>|<(?:bos|eos|pad|unk)>"
)
_OPENERS = re.compile(f"[{_LT}\\[]")


@lru_cache(maxsize=16)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern[str]:
    exact = sorted((t for t in tokens if len(t) >= 2), key=len, reverse=True)
    return re.compile("|".join([*(re.escape(t) for t in exact), _GENERIC]))


def neutralize(text: str, tokens: tuple[str, ...] = ()) -> str:
    """`text` with a word joiner inside every special token (and every generic chat-template marker)."""
    if not _OPENERS.search(text) and not any(t in text for t in tokens):
        return text
    return _pattern(tokens).sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)
