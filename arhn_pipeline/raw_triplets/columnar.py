"""The columnar ingest: a chunk of lines parsed, validated, normalized and hashed by DuckDB and Polars over the chunk.

A line is taken here only when every rule of the line-by-line path (sources/rows.py) provably holds for it:
its JSON shape (one `json_structure` per line, the few distinct shapes checked in Python) has the right types,
no key repeats, no trailing comma (DuckDB's parser admits them, Python's does not), every text is non-empty,
free of control characters and within the size limit, the parallel lists match, the scores are finite, and no
passage repeats within the line. Any other line goes back to the line-by-line path (`fallback`), which gives
the same quarantine rows as ever. Passage ids are computed as identity.passage_key does (NFC, Python's
whitespace runs as one space, stripped, sha256): a test checks both on real files.

DuckDB parses and checks; Polars does the byte-level work it does faster: whether a line is plain (SIMD substring
search), the sha256 of each passage (polars-hash, which uses the CPU's SHA instructions) and the first raw form of
each passage (sorted views, no copies of the texts): 3 ms and 14 ms for a 16 MiB chunk against DuckDB's 20 ms and
55 ms, a chunk's whole parse 196 -> 129 ms (bench/ingest.py's file, one core; docs/measurements.md).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl
import polars_hash as plh
import pyarrow as pa
import pyarrow.compute as pc

from arhn_pipeline.sources.rows import Format

# Python's whitespace (str.isspace, which `\s` and str.strip use), as an RE2 class.
_WS = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
WS_CLASS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _WS) + "]"
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
_TRAILING_COMMA = r",[ \t\r\n]*[\]}]"

_ID = {"VARCHAR", "UBIGINT", "BIGINT"}
_NUMBER = {"DOUBLE", "UBIGINT", "BIGINT"}

BGE_STRUCTURE = {
    "query": "VARCHAR",
    "pos": ["VARCHAR"],
    "neg": ["VARCHAR"],
    "pos_scores": ["DOUBLE"],
    "neg_scores": ["DOUBLE"],
    "pos_ids": ["VARCHAR"],
    "neg_ids": ["VARCHAR"],
    "query_id": "VARCHAR",
    "qid": "VARCHAR",
    "prompt": "VARCHAR",
    "type": "VARCHAR",
}
_PASSAGE = {"docid": "VARCHAR", "title": "VARCHAR", "text": "VARCHAR", "score": "DOUBLE"}
TEVATRON_STRUCTURE = {
    "query_id": "VARCHAR",
    "query": "VARCHAR",
    "positive_passages": [_PASSAGE],
    "negative_passages": [_PASSAGE],
}


# Text that is plain: printable ASCII with single spaces inside. Most passages are; for them normalizing is a
# no-op and no character rule can fail, so the costly functions run only on the others.
_UNUSUAL = r"[\x00-\x1f\x{7f}-\x{10ffff}]|  |^ | $"
_WS_NOT_SPACE = WS_CLASS.replace("\\x{20}", "")


def plain_lines(texts: pa.Array) -> pa.Array:
    """Per line, whether it is ASCII without a backslash (so no JSON escape), DEL or two spaces in a row: such a
    line holds only texts that are plain but for a space at either end (a raw control character is not JSON:
    such a line is not taken)."""
    raw = pl.Series(texts)
    odd = (
        (raw.str.len_bytes() != raw.str.len_chars())
        | raw.str.contains("\\", literal=True)
        | raw.str.contains("\x7f", literal=True)
        | raw.str.contains("  ", literal=True)
    )
    return (~odd).to_arrow()


def unusual_sql(expr: str) -> str:
    """Whether a text of a line's candidates matches _UNUSUAL: on a plain line only its ends can."""
    return (
        f"CASE WHEN plain THEN starts_with({expr}, ' ') OR ends_with({expr}, ' ') "
        f"ELSE regexp_matches({expr}, '{_UNUSUAL}') END"
    )


def normalized_sql(expr: str, unusual: str | None = None) -> str:
    """identity.normalize_text in SQL: NFC, Python's whitespace runs as one space, stripped. `unusual`: an
    expression already holding whether `expr` matches _UNUSUAL (else it is computed here)."""
    unusual = unusual or f"regexp_matches({expr}, '{_UNUSUAL}')"
    return (
        f"CASE WHEN NOT {unusual} THEN {expr} "
        f"WHEN regexp_matches({expr}, '{_WS_NOT_SPACE}|  |^ | $') "
        f"THEN trim(regexp_replace(nfc_normalize({expr}), '{WS_CLASS}+', ' ', 'g'), ' ') "
        f"ELSE nfc_normalize({expr}) END"
    )


def _scalar_only(shape: object) -> bool:
    """A shape with no object in it (an extra field's duplicate keys would go unseen)."""
    if isinstance(shape, list):
        return all(_scalar_only(s) for s in shape)
    return isinstance(shape, str)


def _optional(shape: dict, key: str, allowed: set[str], listed: bool) -> bool:
    if key not in shape or shape[key] == "NULL":
        return True
    value = shape[key]
    if listed:
        return isinstance(value, list) and len(value) == 1 and _is(value[0], allowed)
    return _is(value, allowed)


def _is(shape: object, allowed: set[str]) -> bool:
    return isinstance(shape, str) and shape in allowed


def accepts(shape: object, fmt: Format) -> bool:
    """Whether rows of this JSON shape (DuckDB's json_structure) can be taken by the columnar path."""
    if not isinstance(shape, dict):
        return False
    if fmt == "bge":
        known = {
            "query": shape.get("query") == "VARCHAR",
            "pos": shape.get("pos") == ["VARCHAR"],
            "neg": shape.get("neg") == ["VARCHAR"],
            "pos_scores": _optional(shape, "pos_scores", _NUMBER, True),
            "neg_scores": _optional(shape, "neg_scores", _NUMBER, True),
            "pos_ids": _optional(shape, "pos_ids", _ID, True),
            "neg_ids": _optional(shape, "neg_ids", _ID, True),
            "query_id": _optional(shape, "query_id", _ID, False),
            "qid": _optional(shape, "qid", _ID, False),
            "prompt": _optional(shape, "prompt", {"VARCHAR"}, False),
            "type": _optional(shape, "type", {"VARCHAR"}, False),
        }
    else:
        known = {
            "query_id": _is(shape.get("query_id"), _ID),
            "query": shape.get("query") == "VARCHAR",
            "positive_passages": _passages(shape.get("positive_passages")),
            "negative_passages": _passages(shape.get("negative_passages")),
        }
    extra_ok = all(_scalar_only(v) for k, v in shape.items() if k not in known)
    return all(known.values()) and extra_ok


def _accepted(shape: str, fmt: Format) -> bool:
    try:
        return accepts(json.loads(shape), fmt)
    except RecursionError:  # nested deeper than any row format: the line-by-line path names it
        return False


def _passages(shape: object) -> bool:
    if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], dict)):
        return False
    p = shape[0]
    return (
        p.get("text") == "VARCHAR"
        and _optional(p, "docid", _ID, False)
        and _optional(p, "title", {"VARCHAR"}, False)
        and _optional(p, "score", _NUMBER, False)
        and all(_scalar_only(v) for k, v in p.items() if k not in _PASSAGE)
    )


@dataclass
class ChunkResult:
    """What the columnar path made of one chunk: `fallback` lines go to the line-by-line path; `queries` (line,
    query_id, query, prompt, type), `candidates` (line, role, rank, passage_id, score, source_id, query_id; and
    title, text only when `variants`) and `passages` hold the rest."""

    fallback: np.ndarray  # line numbers
    queries: pa.Table
    candidates: pa.Table  # with each line's query_id
    passages: pa.Table  # passage_id, title, text: each passage once, as the chunk first gave it
    # Whether a passage given more than once may differ in its raw text between lines (spaces, Unicode forms
    # that normalize alike). Without such a passage, `passages` holds every candidate's own title and text, so
    # `candidates` leaves them out (the chunk's largest column, copied for nothing on the usual path).
    variants: bool = True


def first_texts(candidates: pl.DataFrame, *also: pl.Expr) -> pl.DataFrame:
    """Each passage of `candidates` once, with the title and text of its first candidate (in line order,
    positives first); `also`: more aggregates over each passage's candidates. (Polars keeps the texts where
    they are; DuckDB's arg_min copied them twice, into its aggregate and out to Arrow: 129 against 147 ms a
    16 MiB chunk.)"""
    seen = pl.col("line") * 4194304 + (pl.col("role") == "negative").cast(pl.Int64) * 2097152 + pl.col("rank")
    by_passage = candidates.sort(seen).group_by("passage_id", maintain_order=True)
    return by_passage.agg(pl.col("title").first(), pl.col("text").first(), *also)


def _texts_ok(expr: str, max_text_chars: int, unusual: str | None = None) -> str:
    """rows._clean_text's rules: not empty once stripped, not too long, no control character. A text that is
    not unusual (printable ASCII, single spaces inside) only needs its length checked."""
    unusual = unusual or f"regexp_matches({expr}, '{_UNUSUAL}')"
    return (
        f"(CASE WHEN NOT {unusual} THEN length({expr}) BETWEEN 1 AND {max_text_chars} "
        f"ELSE length({expr}) <= {max_text_chars} AND NOT regexp_full_match({expr}, '{WS_CLASS}*') "
        f"AND NOT regexp_matches({expr}, '{_CONTROL}') END)"
    )


def parse_chunk(
    conn: duckdb.DuckDBPyConnection, lines: np.ndarray, texts: pa.Array, fmt: Format, max_text_chars: int
) -> ChunkResult:
    """Parse, check and split one chunk (in `conn`'s temporary tables, dropped after); returns its rows and the
    lines left to the slow path."""
    structure = json.dumps(BGE_STRUCTURE if fmt == "bge" else TEVATRON_STRUCTURE)
    nested = "true"
    if fmt == "tevatron":  # the passages' own keys (the only objects a taken shape can hold) are checked too
        nested = " AND ".join(
            f"coalesce(try(list_bool_and(list_transform(json_keys(raw, '$.{side}[*]'), "
            "lambda k: len(k) = len(list_distinct(k))))), false)"
            for side in ("positive_passages", "negative_passages")
        )
    conn.register("_col_in", pa.table({"line": pa.array(lines, pa.int64()), "raw": texts, "plain": plain_lines(texts)}))
    # one scan of the chunk: the line's shape, its keys, its values, and DuckDB's one leniency (trailing commas);
    # on a line with nothing odd in its bytes (`plain`) the costlier character checks of each text are spared
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE _col_rows AS
        SELECT line, try(json_structure(raw)) AS shape, try(json_keys(raw)) AS keys, {nested} AS nested_keys_unique,
               try(json_transform(raw, '{structure}')) AS r, plain, regexp_matches(raw, '{_TRAILING_COMMA}') AS comma
        FROM _col_in"""
    )
    conn.unregister("_col_in")
    shapes = [s for (s,) in conn.execute("SELECT DISTINCT shape FROM _col_rows WHERE shape IS NOT NULL").fetchall()]
    taken = [s for s in shapes if _accepted(s, fmt)]
    queries_sql, candidates_sql = _bge(max_text_chars) if fmt == "bge" else _tevatron(max_text_chars)
    conn.execute(f"CREATE OR REPLACE TEMP TABLE _col_queries AS {queries_sql}", {"taken": taken})
    candidates = _with_passage_ids(conn.execute(candidates_sql).to_arrow_table())
    conn.execute("DROP TABLE _col_rows")
    queries = conn.execute("FROM _col_queries").to_arrow_table()
    conn.execute("DROP TABLE _col_queries")
    # a line with a bad text or a repeated passage goes to the line-by-line path (which folds and names them)
    bad = (
        candidates.group_by("line")
        .agg(ok=pl.col("text_ok").all() & (pl.col("passage_id").n_unique() == pl.len()))
        .filter(~pl.col("ok"))["line"]
    )
    if len(bad):
        candidates = candidates.filter(~pl.col("line").is_in(bad.implode()))
        queries = queries.filter(pc.invert(pc.is_in(queries["line"], bad.to_arrow())))
    fallback = np.setdiff1d(lines, queries["line"].to_numpy(), assume_unique=True)
    # a passage whose raw text can differ between its lines: given more than once, not always in normal form
    # (a text in normal form is the only raw text of its passage id)
    passages = first_texts(candidates, ((pl.len() > 1) & ~pl.col("normal").all()).alias("variable"))
    variants = bool(passages["variable"].any())
    query_ids = pl.from_arrow(queries.select(["line", "query_id"]))
    assert isinstance(query_ids, pl.DataFrame)
    dropped = ["text_ok", "normal"] if variants else ["text_ok", "normal", "title", "text"]
    return ChunkResult(
        fallback.astype(np.int64),
        queries,
        candidates.drop(dropped).join(query_ids, on="line", how="inner", maintain_order="left").to_arrow(),
        passages.drop("variable").to_arrow(),
        variants,
    )


def _with_passage_ids(candidates: pa.Table) -> pl.DataFrame:
    """The candidates with their passage ids: the first 20 hex digits of the sha256 of `body` (the normalized
    passage, given where it differs from `text`) or else of `text`."""
    frame = pl.from_arrow(candidates)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(body=pl.coalesce("body", "text"))
    return frame.with_columns(passage_id=plh.col("body").chash.sha2_256().str.slice(0, 20)).drop("body")


def _taken_rows() -> str:
    """The lines whose shape, keys and syntax the columnar path takes."""
    return (
        "list_contains($taken, shape) AND NOT comma AND r IS NOT NULL AND nested_keys_unique "
        "AND len(keys) = len(list_distinct(keys))"
    )


def _bge(max_text_chars: int) -> tuple[str, str]:
    """The SQL of a BGE chunk's queries (a table) and candidates (each with `body`: its normalized text where that
    differs from `text`)."""
    ok = f"""{_texts_ok("r.query", max_text_chars)}
        AND len(r.pos) >= 1 AND len(r.neg) >= 1
        AND list_aggregate(r.pos, 'count') = len(r.pos) AND list_aggregate(r.neg, 'count') = len(r.neg)"""
    for name, ref in (("pos_scores", "pos"), ("neg_scores", "neg"), ("pos_ids", "pos"), ("neg_ids", "neg")):
        ok += f"""
        AND (r.{name} IS NULL OR (len(r.{name}) = len(r.{ref})
             AND list_aggregate(r.{name}, 'count') = len(r.{name})))"""
    for name in ("pos_scores", "neg_scores"):
        ok += f"\n        AND (r.{name} IS NULL OR list_bool_and(list_transform(r.{name}, lambda x: isfinite(x))))"
    # `query_id or qid or derived`: an empty or zero id falls through, which the line-by-line path decides
    for name in ("query_id", "qid"):
        ok += f"""
        AND coalesce(r.{name}, '-') != ''
        AND NOT coalesce(r.{name} = '0' AND json_extract_string(shape, '$.{name}') != 'VARCHAR', false)"""
    queries = f"""
        SELECT line, coalesce(r.query_id, r.qid, 'q' || left(sha256({normalized_sql("r.query")}), 16)) AS query_id,
               r.query AS query, r.prompt AS prompt, r.type AS type
        FROM _col_rows WHERE {_taken_rows()} AND {ok}"""
    candidates = f"""
        SELECT line, role, rank, CASE WHEN unusual THEN {normalized_sql("text", "unusual")} END AS body,
               NULL::VARCHAR AS title, text, score, source_id,
               {_texts_ok("text", max_text_chars, "unusual")} AS text_ok, NOT unusual AS normal
        FROM (SELECT *, {unusual_sql("text")} AS unusual FROM (
            SELECT line, plain, 'positive' AS role, generate_subscripts(r.pos, 1) - 1 AS rank, unnest(r.pos) AS text,
                   unnest(r.pos_scores) AS score, unnest(r.pos_ids) AS source_id
            FROM _col_rows SEMI JOIN _col_queries USING (line)
            UNION ALL
            SELECT line, plain, 'negative', generate_subscripts(r.neg, 1) - 1, unnest(r.neg), unnest(r.neg_scores),
                   unnest(r.neg_ids)
            FROM _col_rows SEMI JOIN _col_queries USING (line)
        ))"""
    return queries, candidates


def _tevatron(max_text_chars: int) -> tuple[str, str]:
    """The SQL of a Tevatron chunk's queries and candidates, as _bge's."""
    ok = f"""{_texts_ok("r.query", max_text_chars)}
        AND len(r.positive_passages) >= 1 AND len(r.negative_passages) >= 1"""
    for side in ("positive_passages", "negative_passages"):
        ok += f"""
        AND list_bool_and(list_transform(r.{side}, lambda p: p IS NOT NULL AND p.text IS NOT NULL
             AND (p.score IS NULL OR isfinite(p.score))))"""
    body = (
        f"CASE WHEN title IS NULL THEN {normalized_sql('text', 'unusual')} "
        f"ELSE {normalized_sql('title')} || chr(10) || {normalized_sql('text', 'unusual')} END"
    )
    queries = f"""
        SELECT line, r.query_id AS query_id, r.query AS query, NULL::VARCHAR AS prompt, NULL::VARCHAR AS type
        FROM _col_rows WHERE {_taken_rows()} AND {ok}"""
    candidates = f"""
        SELECT line, role, rank, CASE WHEN unusual OR title IS NOT NULL THEN {body} END AS body, title, text, score,
               source_id, {_texts_ok("text", max_text_chars, "unusual")} AS text_ok,
               NOT unusual AND (title IS NULL OR NOT regexp_matches(title, '{_UNUSUAL}')) AS normal
        FROM (
            SELECT line, role, rank, nullif(p.title, '') AS title, p.text AS text, p.score AS score,
                   p.docid AS source_id, {unusual_sql("p.text")} AS unusual
            FROM (
                SELECT line, plain, 'positive' AS role, generate_subscripts(r.positive_passages, 1) - 1 AS rank,
                       unnest(r.positive_passages) AS p
                FROM _col_rows SEMI JOIN _col_queries USING (line)
                UNION ALL
                SELECT line, plain, 'negative', generate_subscripts(r.negative_passages, 1) - 1,
                       unnest(r.negative_passages)
                FROM _col_rows SEMI JOIN _col_queries USING (line)
            )
        )"""
    return queries, candidates
