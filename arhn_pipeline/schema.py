"""Every table and view of the pipeline, in one place: the stages write rows into them, the engine's call
cache into `llm_calls`, and nothing else creates a table. `create_schema` is idempotent."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import duckdb

SCHEMA = """
-- Every LLM call of every stage; also the cache (see engine/cache.py): a stored key is never asked again.
CREATE TABLE IF NOT EXISTS llm_calls (
    call_id              VARCHAR PRIMARY KEY,  -- LLMRequest.cache_key(model)
    model                VARCHAR NOT NULL,
    engine               VARCHAR NOT NULL,     -- vllm | openai | scripted
    template             VARCHAR NOT NULL,     -- prompt file, e.g. snippets/snippet.prompt.yaml
    template_version     VARCHAR NOT NULL,     -- content hash of that file
    messages             JSON NOT NULL,        -- exactly what was asked
    sampling             JSON NOT NULL,
    structured           JSON,
    response             VARCHAR NOT NULL,     -- exactly what was answered
    finish_reason        VARCHAR,
    prompt_tokens        INTEGER,
    completion_tokens    INTEGER,
    cached_prompt_tokens INTEGER,              -- served from the prefix cache (vLLM)
    batch_seconds        DOUBLE,               -- wall time of the engine call that answered it
    batch_size           INTEGER,
    parse_status         VARCHAR,              -- set by the stage's parser: parsed | repaired | unparsed | ...
    created_at           TIMESTAMP NOT NULL
);
-- A key answered by two runs racing (both looked it up before either stored it): the first answer is kept
-- in llm_calls and used by both; each repeat is counted here (rare, by design: see storage.py).
CREATE TABLE IF NOT EXISTS llm_calls_asked_twice (
    call_id    VARCHAR NOT NULL,
    model      VARCHAR NOT NULL,
    template   VARCHAR NOT NULL,
    stored_at  TIMESTAMP NOT NULL
);
-- Calls a remote engine could not answer (after its retries): what failed, each time. Not answers: a re-run
-- asks them again.
CREATE TABLE IF NOT EXISTS llm_failures (
    call_id    VARCHAR NOT NULL,
    model      VARCHAR NOT NULL,
    engine     VARCHAR NOT NULL,
    template   VARCHAR NOT NULL,
    error      VARCHAR NOT NULL,
    failed_at  TIMESTAMP NOT NULL
);
-- Batches submitted to a provider's Batch API (engine/batch_api.py), recorded before any wait: a killed run
-- collects them instead of submitting their calls again.
CREATE TABLE IF NOT EXISTS llm_batches (
    batch_id      VARCHAR PRIMARY KEY,   -- the provider's id
    endpoint      VARCHAR NOT NULL,      -- base URL it was submitted to
    model         VARCHAR NOT NULL,
    template      VARCHAR NOT NULL,
    partition     VARCHAR,               -- the partition and asset whose stage submitted it (what the sensor re-runs)
    asset         VARCHAR,
    input_file_id VARCHAR NOT NULL,
    call_ids      VARCHAR[] NOT NULL,    -- the custom_ids: call keys of llm_calls
    status        VARCHAR NOT NULL,      -- the provider's last status, or collected
    counts        JSON,                  -- the provider's request_counts when last seen
    submitted_at  TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS passages (
    passage_id VARCHAR PRIMARY KEY,   -- passage_key(title, text)
    title      VARCHAR,
    text       VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS queries (
    subset     VARCHAR NOT NULL,
    query_id   VARCHAR NOT NULL,
    text       VARCHAR NOT NULL,
    prompt     VARCHAR,               -- BGE instruction, when the source gives one
    type       VARCHAR,
    source     VARCHAR NOT NULL,      -- file path or hub id
    line       BIGINT NOT NULL        -- 1-based line (file) or row index + 1 (hub dataset)
);
CREATE TABLE IF NOT EXISTS candidates (
    subset            VARCHAR NOT NULL,
    query_id          VARCHAR NOT NULL,
    passage_id        VARCHAR NOT NULL,
    role              VARCHAR NOT NULL,   -- positive | negative
    original_rank     INTEGER NOT NULL,   -- 0-based position in the source's pos or neg list
    original_score    DOUBLE,
    source_passage_id VARCHAR             -- the id the source gave, if any
);
CREATE TABLE IF NOT EXISTS quarantine (
    subset  VARCHAR NOT NULL,
    source  VARCHAR NOT NULL,
    line    BIGINT NOT NULL,
    field   VARCHAR NOT NULL,
    reason  VARCHAR NOT NULL,
    scope   VARCHAR NOT NULL,             -- row: the line was left out; candidate: one passage was left out
    raw     VARCHAR                       -- the offending line (or value) as read, for inspection
);
-- ARHN stage 1: one row per (query, candidate), positives included.
CREATE TABLE IF NOT EXISTS snippets (
    subset            VARCHAR NOT NULL,
    query_id          VARCHAR NOT NULL,
    passage_id        VARCHAR NOT NULL,
    role              VARCHAR NOT NULL,
    status            VARCHAR NOT NULL,   -- vocab.SnippetStatus: answer_verified | no_answer | unparsed | not_asked ...
    snippet           VARCHAR,
    match             VARCHAR,            -- exact | normalized (verified snippets)
    detail            VARCHAR,            -- why an answer is unparsed
    passage_truncated BOOLEAN NOT NULL,   -- the prompt showed the passage cut to the token budget
    call_id           VARCHAR,            -- -> llm_calls (NULL: not_asked)
    template_version  VARCHAR NOT NULL,
    model             VARCHAR NOT NULL
);
-- ARHN stage 2: every candidate's place in its query's final listwise ranking.
CREATE TABLE IF NOT EXISTS rankings (
    subset        VARCHAR NOT NULL,
    query_id      VARCHAR NOT NULL,
    passage_id    VARCHAR NOT NULL,
    role          VARCHAR NOT NULL,
    rank          INTEGER NOT NULL,     -- 0 = best
    placed        BOOLEAN NOT NULL,     -- the model placed it (false: appended by permutation repair)
    positive_rank INTEGER NOT NULL,     -- best rank among the query's original positives
    call_ids      VARCHAR[] NOT NULL    -- the window calls it was shown in
);
-- One row per listwise request (window) with what its parser repaired.
CREATE TABLE IF NOT EXISTS ranking_windows (
    subset           VARCHAR NOT NULL,
    query_id         VARCHAR NOT NULL,
    window_index     INTEGER NOT NULL,  -- in the order they were asked (back to front)
    span_start       INTEGER NOT NULL,
    span_end         INTEGER NOT NULL,
    shown            VARCHAR[] NOT NULL, -- passage ids in the order shown (identifier k = shown[k-1])
    status           VARCHAR NOT NULL,  -- parsed | repaired | unparsed
    repairs          VARCHAR,
    call_id          VARCHAR NOT NULL,
    template_version VARCHAR NOT NULL,
    model            VARCHAR NOT NULL
);
-- The pruned collection: the kept sub-datasets of one cleaning method, in BGE shape.
CREATE TABLE IF NOT EXISTS pruned_collection (
    name     VARCHAR NOT NULL,   -- PrunedCollectionConfig.name
    method   VARCHAR NOT NULL,   -- original | arhn:R+F | rlhn:rlhn | ...
    subset   VARCHAR NOT NULL,
    query_id VARCHAR NOT NULL,
    query    VARCHAR NOT NULL,
    prompt   VARCHAR,
    pos      VARCHAR[] NOT NULL,
    neg      VARCHAR[] NOT NULL
);
-- Retriever evaluation: one row per (variant, eval set); `base` is the untrained model.
CREATE TABLE IF NOT EXISTS retriever_eval (
    variant       VARCHAR NOT NULL,
    eval_set      VARCHAR NOT NULL,
    ndcg_at_10    DOUBLE NOT NULL,
    recall_at_100 DOUBLE NOT NULL,
    queries       INTEGER NOT NULL,
    model_path    VARCHAR NOT NULL,
    evaluated_at  TIMESTAMP NOT NULL
);
-- Reranker evaluation: one row per (variant, eval set): the variant's cross-encoder re-ranking the first stage's top k.
CREATE TABLE IF NOT EXISTS reranker_eval (
    variant                VARCHAR NOT NULL,
    eval_set               VARCHAR NOT NULL,
    ndcg_at_10             DOUBLE NOT NULL,
    recall_at_100          DOUBLE NOT NULL,   -- of the re-ranked list (the first stage's top k, so its own recall)
    first_stage            VARCHAR NOT NULL,  -- the retriever whose top k is re-ranked
    first_stage_ndcg_at_10 DOUBLE NOT NULL,
    depth                  INTEGER NOT NULL,  -- k
    queries                INTEGER NOT NULL,
    model_path             VARCHAR NOT NULL,
    evaluated_at           TIMESTAMP NOT NULL
);
-- The comparison of every cleaning method (and detector) on the same partitions: one row per (method, eval set);
-- eval_set is NULL for a method with no trained model (a detector, a variant not trained).
CREATE TABLE IF NOT EXISTS method_comparison (
    method                 VARCHAR NOT NULL,  -- original | arhn:R | ... | rlhn:<technique> | pruned:<name> | a detector
    kind                   VARCHAR NOT NULL,  -- collection (a training set) | detector (flags only, changes nothing)
    subsets                VARCHAR[] NOT NULL,
    negatives              INTEGER NOT NULL,
    proposed               INTEGER NOT NULL,  -- negatives the judge would change (a detector: flags)
    changed                INTEGER NOT NULL,  -- negatives changed in the collection (after the gate)
    share_changed          DOUBLE NOT NULL,
    to_positive            INTEGER NOT NULL,
    dropped_negatives      INTEGER NOT NULL,
    dropped_queries        INTEGER NOT NULL,
    gate                   VARCHAR NOT NULL,  -- applied | withheld | partly applied (k of n) | not gated
    eval_set               VARCHAR,
    retriever_ndcg_at_10   DOUBLE,
    retriever_recall_at_100 DOUBLE,
    reranker_ndcg_at_10    DOUBLE,
    compared_at            TIMESTAMP NOT NULL
);
-- Each compared method's agreement with every reference of the compared partitions (as `arhn agreement` computes it).
CREATE TABLE IF NOT EXISTS method_agreement (
    method        VARCHAR NOT NULL,
    reference     VARCHAR NOT NULL,   -- the partition whose registry entry names the reference
    trained_on    BOOLEAN NOT NULL,   -- a judge behind the method was fitted on this reference: not a measurement
    pairs         INTEGER NOT NULL,
    no_prediction INTEGER NOT NULL,
    precision     DOUBLE NOT NULL,
    recall        DOUBLE NOT NULL,
    f1            DOUBLE NOT NULL,
    kappa         DOUBLE NOT NULL
);
-- RLHN cascade: one verdict per (stage, query, negative) for every query the stage saw.
CREATE TABLE IF NOT EXISTS verdicts (
    subset           VARCHAR NOT NULL,
    stage_index      INTEGER NOT NULL,   -- 0 = first stage of the cascade
    stage            VARCHAR NOT NULL,
    query_id         VARCHAR NOT NULL,
    passage_id       VARCHAR NOT NULL,
    verdict          VARCHAR NOT NULL,   -- better | worse | none | unparsed
    score            DOUBLE,             -- margin stage: cosine of the negative to the query
    status           VARCHAR NOT NULL,   -- parsed | repaired | unparsed (the answer for the whole query)
    notes            VARCHAR,
    call_id          VARCHAR,            -- LLM stages -> llm_calls
    model            VARCHAR NOT NULL,
    template_version VARCHAR,
    final            BOOLEAN NOT NULL    -- the last stage that saw this query: its verdict stands
);
-- One decision per (method, query, candidate): what happened to it, which rule fired, and the evidence.
CREATE TABLE IF NOT EXISTS decisions (
    subset          VARCHAR NOT NULL,
    method          VARCHAR NOT NULL,   -- arhn:R | arhn:F | arhn:R+F | rlhn:<technique>
    query_id        VARCHAR NOT NULL,
    passage_id      VARCHAR NOT NULL,
    role            VARCHAR NOT NULL,   -- the original role
    action          VARCHAR NOT NULL,   -- keep | to_positive | drop_negative | drop_query
    rule            VARCHAR NOT NULL,
    snippet_status  VARCHAR,
    snippet         VARCHAR,
    snippet_call_id VARCHAR,
    rank            INTEGER,
    positive_rank   INTEGER,
    rank_call_ids   VARCHAR[],
    verdict         VARCHAR,            -- RLHN: better | worse | none | unparsed
    verdict_call_id VARCHAR,
    prompt_versions VARCHAR NOT NULL,   -- stage=version, ... of the evidence (as stored with it)
    model           VARCHAR,            -- the models that produced the evidence
    judge           VARCHAR,            -- the judge's identity (rules/decisions.py): method, models, prompts, settings
    proposed_action VARCHAR,            -- what the rule decided, before the qualification gate
    proposed_rule   VARCHAR,            -- the rule that decided it (`rule` says withheld_unqualified_judge if withheld)
    gate            VARCHAR             -- the gate's reason: applied or withheld, with the measured kappa
);
-- Each judge's agreement with every reference entry other than the partition it qualifies for.
CREATE TABLE IF NOT EXISTS judge_qualification (
    subset        VARCHAR NOT NULL,     -- the partition whose decisions this qualifies (never its own reference)
    method        VARCHAR NOT NULL,
    judge         VARCHAR NOT NULL,
    reference     VARCHAR NOT NULL,     -- a registry entry with a `reference`, or reviews:<the partition itself>
    reference_format VARCHAR NOT NULL,
    pairs         INTEGER NOT NULL,     -- labelled negatives with a prediction
    no_prediction INTEGER NOT NULL,     -- labelled negatives whose evidence could not be read
    tp            INTEGER NOT NULL,
    fp            INTEGER NOT NULL,
    fn            INTEGER NOT NULL,
    tn            INTEGER NOT NULL,
    precision     DOUBLE NOT NULL,
    recall        DOUBLE NOT NULL,
    f1            DOUBLE NOT NULL,
    kappa         DOUBLE NOT NULL
);
-- The candidates drawn for a person to review, per partition: a stratified random sample (review/core.py), in
-- the order they are shown; each stratum's size and how many were drawn from it give the estimate's weights.
CREATE TABLE IF NOT EXISTS review_items (
    subset        VARCHAR NOT NULL,
    sample_id     VARCHAR NOT NULL,     -- the draw: hash of (subset, seed, size)
    item          INTEGER NOT NULL,     -- the order shown
    query_id      VARCHAR NOT NULL,
    passage_id    VARCHAR NOT NULL,
    stratum       VARCHAR NOT NULL,     -- the methods that change the negative, and the first-stage score band
    stratum_size  INTEGER NOT NULL,     -- the partition's negatives in the stratum
    stratum_drawn INTEGER NOT NULL,
    inclusion_probability DOUBLE NOT NULL,
    seed          INTEGER NOT NULL,
    drawn_at      TIMESTAMP NOT NULL
);
-- Every answer a person gave about a candidate; append-only (a changed answer is a new row; a reviewer's latest
-- answer stands). A reference for the partition it was drawn from (qualify/core.py).
CREATE TABLE IF NOT EXISTS reviews (
    review_id     VARCHAR PRIMARY KEY,  -- hash of (subset, query, passage, reviewer, answer, answered_at)
    subset        VARCHAR NOT NULL,
    query_id      VARCHAR NOT NULL,
    passage_id    VARCHAR NOT NULL,
    reviewer      VARCHAR NOT NULL,
    answer        VARCHAR NOT NULL,     -- as_well | less_well | no | cannot_tell
    shown_at      TIMESTAMP,
    answered_at   TIMESTAMP NOT NULL,
    stratum       VARCHAR,              -- the sampling stratum, and its weight when answered (N_h / n_h)
    weight        DOUBLE,
    shown         JSON,                 -- what the page showed: blind or not, texts' hashes, decisions revealed after
    origin        VARCHAR NOT NULL      -- page | import:<file>
);
-- The cleaned collection per method, in BGE shape: kept and relabeled positives, kept negatives.
CREATE OR REPLACE VIEW cleaned_triplets AS
SELECT d.subset, d.method, d.query_id, any_value(q.text) AS query, any_value(q.prompt) AS prompt,
       list(p.text ORDER BY d.role DESC, c.original_rank)
           FILTER (WHERE d.action = 'to_positive' OR (d.role = 'positive' AND d.action = 'keep')) AS pos,
       list(p.text ORDER BY c.original_rank) FILTER (WHERE d.role = 'negative' AND d.action = 'keep') AS neg
FROM decisions d
JOIN queries q USING (subset, query_id)
JOIN candidates c USING (subset, query_id, passage_id)
JOIN passages p USING (passage_id)
GROUP BY d.subset, d.method, d.query_id
HAVING count(*) FILTER (WHERE d.action = 'drop_query') = 0;
"""

# Views that join across stages (created after every table, the call table included).
VIEWS = """
-- The collection as ingested, in the same shape as cleaned_triplets (method 'original').
CREATE OR REPLACE VIEW original_triplets AS
SELECT c.subset, 'original' AS method, c.query_id, any_value(q.text) AS query, any_value(q.prompt) AS prompt,
       list(p.text ORDER BY c.original_rank) FILTER (WHERE c.role = 'positive') AS pos,
       list(p.text ORDER BY c.original_rank) FILTER (WHERE c.role = 'negative') AS neg
FROM candidates c JOIN queries q USING (subset, query_id) JOIN passages p USING (passage_id)
GROUP BY c.subset, c.query_id;
CREATE OR REPLACE VIEW triplets AS
SELECT * FROM original_triplets UNION ALL BY NAME SELECT * FROM cleaned_triplets;
-- Why was this candidate kept, relabeled or dropped? One row per decision with its texts and raw answers.
CREATE OR REPLACE VIEW decision_trail AS
SELECT d.subset, d.method, d.query_id, q.text AS query, d.passage_id, p.text AS passage, d.role,
       d.action, d.rule,
       d.snippet_status, d.snippet, d.snippet_call_id, sc.response AS snippet_response,
       d.rank, d.positive_rank, d.rank_call_ids,
       d.verdict, d.verdict_call_id, vc.response AS verdict_response,
       d.prompt_versions, d.model, d.judge, d.proposed_action, d.proposed_rule, d.gate
FROM decisions d
JOIN queries q USING (subset, query_id)
JOIN passages p USING (passage_id)
LEFT JOIN llm_calls sc ON sc.call_id = d.snippet_call_id
LEFT JOIN llm_calls vc ON vc.call_id = d.verdict_call_id;
"""


# Columns added after a table's first release: files made by an earlier version get them on open.
MIGRATIONS = """
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS judge VARCHAR;
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS proposed_action VARCHAR;
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS proposed_rule VARCHAR;
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS gate VARCHAR;
ALTER TABLE verdicts ADD COLUMN IF NOT EXISTS vote_margin DOUBLE;
ALTER TABLE judge_qualification ADD COLUMN IF NOT EXISTS kappa_low DOUBLE;
ALTER TABLE judge_qualification ADD COLUMN IF NOT EXISTS kappa_high DOUBLE;
ALTER TABLE judge_qualification ADD COLUMN IF NOT EXISTS reviewers_items INTEGER;
ALTER TABLE judge_qualification ADD COLUMN IF NOT EXISTS reviewers_kappa DOUBLE;
ALTER TABLE judge_qualification ADD COLUMN IF NOT EXISTS covered DOUBLE;
"""
# Columns that lost their NOT NULL after their first release: (table, column).
NOW_NULLABLE = (("snippets", "call_id"),)


def create_schema(conn: duckdb.DuckDBPyConnection, lake: bool = False) -> None:
    """Every table and view, in a DuckDB file or (`lake`) a DuckLake catalog, which has no primary keys: there
    a key column is NOT NULL, and every insert that must not repeat a key is an anti-join (in both). A DuckLake
    catalog is shared by many processes: its schema is made once per version of these statements (recorded
    in `schema_version`), not on every connection."""
    tables = SCHEMA.replace("PRIMARY KEY", "NOT NULL") if lake else SCHEMA
    version = hashlib.sha256((tables + MIGRATIONS + repr(NOW_NULLABLE) + VIEWS).encode()).hexdigest()[:16]
    if lake and _recorded_version(conn) == version:
        return
    conn.execute(tables)
    conn.execute(MIGRATIONS)
    for table, column in NOW_NULLABLE:
        nullable = conn.execute(
            "SELECT is_nullable FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = current_schema() AND table_name = ? AND column_name = ?",
            [table, column],
        ).fetchone()
        if nullable == (False,):
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL")
    conn.execute(VIEWS)
    if lake:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version VARCHAR NOT NULL, made_at TIMESTAMP)")
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version VALUES (?, now())", [version])


def _recorded_version(conn: duckdb.DuckDBPyConnection) -> str | None:
    exists = conn.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND table_name = 'schema_version'"
    ).fetchone()
    if exists != (1,):
        return None
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] if row else None


# DuckDB column types -> the Polars types the stages build their rows in (integers as Int64 throughout).
_POLARS_TYPES = {
    "VARCHAR": "String",
    "INTEGER": "Int64",
    "BIGINT": "Int64",
    "DOUBLE": "Float64",
    "FLOAT": "Float32",
    "BOOLEAN": "Boolean",
    "TIMESTAMP": "Datetime",
    "TIMESTAMP WITH TIME ZONE": "Datetime",
    "DATE": "Date",
}


@lru_cache(maxsize=1)
def declared_columns() -> dict[str, list[tuple[str, str]]]:
    """Every table's (column, DuckDB type), in order, as the statements above declare them (after migrations):
    the one definition the stages' Polars row schemas are derived from."""
    with duckdb.connect(":memory:") as conn:
        create_schema(conn)
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE NOT internal "
            "AND table_name IN (SELECT table_name FROM duckdb_tables()) ORDER BY table_name, column_index"
        ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in rows:
        out.setdefault(table, []).append((column, kind))
    return out


def frame_schema(table: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The Polars schema of a table's rows (all its columns but `exclude`, in the table's order)."""
    import polars as pl

    def polars_type(kind: str) -> Any:
        if kind.endswith("[]"):
            return pl.List(polars_type(kind[:-2]))
        return getattr(pl, _POLARS_TYPES[kind])

    return {c: polars_type(k) for c, k in declared_columns()[table] if c not in exclude}
