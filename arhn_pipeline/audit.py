"""Why was a negative kept, relabeled or dropped? Everything stored about one query (or one of its
passages): per method the action and rule, the snippet and its status, the ranks, the cascade verdicts,
prompt versions, model, and the raw answers the decisions rest on. Plain SQL over the `decision_trail` view
and the call table, so the same answers come from any DuckDB client."""

from __future__ import annotations

import textwrap

import duckdb


def _cut(text: str | None, n: int = 300) -> str:
    if text is None:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def explain(conn: duckdb.DuckDBPyConnection, subset: str, query_id: str, passage_id: str | None = None) -> str:
    q = conn.execute(
        "SELECT text, source, line FROM queries WHERE subset = ? AND query_id = ?", [subset, query_id]
    ).fetchone()
    if q is None:
        raise LookupError(f"no query {query_id!r} in subset {subset!r}")
    lines = [f"query {query_id} ({subset}, {q[1]} line {q[2]}): {q[0]}"]
    cands = conn.execute(
        """SELECT c.passage_id, c.role, c.original_rank, p.text FROM candidates c JOIN passages p USING (passage_id)
           WHERE c.subset = ? AND c.query_id = ? AND (? IS NULL OR c.passage_id = ?)
           ORDER BY c.role DESC, c.original_rank""",
        [subset, query_id, passage_id, passage_id],
    ).fetchall()
    if not cands:
        raise LookupError(f"passage {passage_id!r} is not a candidate of query {query_id!r}")
    for pid, role, rank, text in cands:
        lines.append("")
        lines.append(f"{role} #{rank}  passage {pid}")
        lines.append(textwrap.indent(_cut(text, 400), "    "))
        decisions = conn.execute(
            """SELECT method, action, rule, snippet_status, snippet, rank, positive_rank, verdict, prompt_versions,
                      model, snippet_response, verdict_response, rank_call_ids, gate
               FROM decision_trail WHERE subset = ? AND query_id = ? AND passage_id = ? ORDER BY method""",
            [subset, query_id, pid],
        ).fetchall()
        for method, action, rule, *_, gate in decisions:
            lines.append(f"  {method:16} {action:14} {rule}")
            if gate:
                lines.append(f"  {'':16} gate: {gate}")
        if decisions:
            first_arhn = next((d for d in decisions if d[0].startswith("arhn:")), None)
            if first_arhn:
                _, _, _, sstatus, snippet, r, prank, _, versions, model, sresp, _, rcalls, _ = first_arhn
                lines.append(f"  snippet: {sstatus}  {_cut(snippet, 200)!s}")
                lines.append(f"    raw answer: {_cut(sresp, 200)}")
                lines.append(f"  rank: {r} (positive at {prank}); ranking calls: {', '.join(rcalls or [])}")
                for call in rcalls or []:
                    resp = conn.execute("SELECT response FROM llm_calls WHERE call_id = ?", [call]).fetchone()
                    if resp is None:  # ranked by a scorer, not an LLM: its scores are the window's note
                        note = conn.execute(
                            "SELECT repairs FROM ranking_windows WHERE subset = ? AND query_id = ? AND call_id = ?",
                            [subset, query_id, call],
                        ).fetchone()
                        lines.append(f"    ranked by {call}: {_cut(note[0] if note else None, 200)}")
                    else:
                        lines.append(f"    raw ranking {call[:12]}: {_cut(resp[0], 200)}")
                lines.append(f"  prompt versions: {versions}; model: {model}")
        verdicts = conn.execute(
            """SELECT v.stage_index, v.stage, v.verdict, v.score, v.final, v.model, c.response
               FROM verdicts v LEFT JOIN llm_calls c USING (call_id)
               WHERE v.subset = ? AND v.query_id = ? AND v.passage_id = ? ORDER BY v.stage_index""",
            [subset, query_id, pid],
        ).fetchall()
        for k, stage, verdict, score, final, model, resp in verdicts:
            extra = f" score {score:.3f}" if score is not None else f" answer: {_cut(resp, 160)}"
            lines.append(f"  cascade stage {k} {stage} ({model}): {verdict}{' [final]' if final else ''}{extra}")
    if passage_id:
        others = conn.execute(
            """SELECT subset, query_id, role FROM candidates WHERE passage_id = ?
               AND NOT (subset = ? AND query_id = ?) ORDER BY subset, query_id""",
            [passage_id, subset, query_id],
        ).fetchall()
        lines.append("")
        lines.append(f"passage {passage_id} also appears in {len(others)} other candidate list(s)")
        lines += [f"  {s} {qid} as {role}" for s, qid, role in others[:50]]
    return "\n".join(lines)
