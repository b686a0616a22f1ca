"""`sample_oracle`: a scripted engine that answers from the embedded samples' planted labels
(data/samples/labels.jsonl). It stands in for a model that judges well, so that a CPU-only demo or UI test
shows every decision path (relabel, filter, cascade flags) on the sample partitions:
  snippets: a positive or planted false negative -> its first sentence, verbatim; anything else NO_ANSWER
  rankings: planted false negatives first, then positives, then ambiguous, then the rest (shown order)
  judges:   planted false negatives are "better", ambiguous ones "worse"
Requests it cannot place (other data) get answers that the parsers record as unparsed.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from arhn_pipeline import settings
from arhn_pipeline.engine.base import LLMRequest
from arhn_pipeline.engine.scripted import register_script
from arhn_pipeline.identity import normalize_text, passage_key

_QUERY = re.compile(r"<query>(.*?)</query>", re.DOTALL)
_PASSAGE = re.compile(r'<passage(?: id="([^"]+)")?>\n(.*?)\n</passage>', re.DOTALL)
RANK = {"false_negative": 0, "positive": 1, "ambiguous": 2}


@lru_cache(maxsize=1)
def _labels() -> dict[str, dict[str, str]]:
    """normalized query text -> passage key -> label (positive, false_negative, ambiguous, negative)."""
    samples = settings.PROJECT_ROOT / "data" / "samples"
    by_qid: dict[str, dict[str, str]] = {}
    for line in (samples / "labels.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        by_qid.setdefault(row["query_id"], {})[row["passage_key"]] = row["label"]
    out = {}
    for path in samples.glob("sample_*.jsonl"):
        for line in path.open(encoding="utf-8"):
            row = json.loads(line)
            labels = by_qid.get(row["query_id"], {})
            labels.update({passage_key(p): "positive" for p in row["pos"]})
            out[normalize_text(row["query"])] = labels
    return out


def _label(query: str, passage: str) -> str | None:
    return _labels().get(normalize_text(query), {}).get(passage_key(passage))


@register_script("sample_oracle")
def sample_oracle(req: LLMRequest) -> str:
    prompt = req.messages[-1][1]
    found = _QUERY.search(prompt)
    query = found.group(1).strip() if found else ""
    shown = _PASSAGE.findall(prompt)
    if "snippets/" in req.template:
        text = shown[0][1] if shown else ""
        if _label(query, text) in ("positive", "false_negative"):
            return json.dumps({"snippet": text.split(". ")[0]})
        return json.dumps({"snippet": "NO_ANSWER"}) if _label(query, text) else "unknown passage"
    if "rankings/" in req.template:
        order = sorted(range(len(shown)), key=lambda i: (RANK.get(_label(query, shown[i][1]) or "", 3), i))
        return json.dumps({"ranking": [shown[i][0] for i in order]}) if _labels().get(normalize_text(query)) else "?"
    negatives = [(ident, _label(query, p)) for ident, p in shown if ident != "known"]
    if not _labels().get(normalize_text(query)):
        return "?"
    return json.dumps(
        {
            "better": [ident for ident, lab in negatives if lab == "false_negative"],
            "worse": [ident for ident, lab in negatives if lab == "ambiguous"],
        }
    )
