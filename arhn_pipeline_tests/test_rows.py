"""Row validation and normalization, without DuckDB or Dagster."""

import pytest

from arhn_pipeline.sources.rows import RowError, derived_query_id, parse_row


def bge(**over):
    row = {"query": "what is x", "pos": ["x is a letter"], "neg": ["y is a letter", "z is a letter"]}
    row.update(over)
    return row


def test_bge_row_maps_scores_ids_and_prompt():
    t = parse_row(bge(pos_scores=[0.9], neg_scores=[0.5, 0.4], neg_ids=["d2", 3], prompt="p: ", type="normal"), "bge")
    assert t.query_id == derived_query_id("what is x")
    assert [c.score for c in t.negatives] == [0.5, 0.4]
    assert [c.source_id for c in t.negatives] == ["d2", "3"]
    assert t.prompt == "p: " and t.type == "normal"
    assert all(len(c.passage_id) == 20 for c in t.positives + t.negatives)


def test_derived_query_id_ignores_whitespace_only_differences():
    assert derived_query_id("what  is x ") == derived_query_id("what is x")


def test_tevatron_row_keeps_titles_and_docids():
    t = parse_row(
        {
            "query_id": 7,
            "query": "q",
            "positive_passages": [{"docid": "a", "title": "T", "text": "pos"}],
            "negative_passages": [{"docid": "b", "title": "", "text": "neg"}],
        },
        "tevatron",
    )
    assert t.query_id == "7"
    assert t.positives[0].title == "T" and t.positives[0].source_id == "a"
    assert t.negatives[0].title is None


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"pos": ["a"], "neg": ["b"]}, "query", "required field is missing"),
        (bge(query="   "), "query", "empty text"),
        (bge(pos=[]), "pos", "at least 1"),
        (bge(neg="not a list"), "neg", "valid list"),
        (bge(neg=["fine", 5]), "neg[1]", "valid string"),
        (bge(neg=[]), "neg", "at least 1"),
        (bge(neg_scores=[0.1]), "row", "neg_scores has 1 entries but neg has 2"),
        (bge(neg=["ok", "bad\x00byte"]), "neg[1]", "control character U+0000"),
        ([1, 2], "row", "expected a JSON object"),
    ],
)
def test_bad_bge_rows_name_their_field(row, field, reason):
    with pytest.raises(RowError) as err:
        parse_row(row, "bge")
    assert err.value.field == field
    assert reason in err.value.reason


def test_tevatron_passage_without_text_names_the_nested_field():
    with pytest.raises(RowError) as err:
        parse_row(
            {
                "query_id": "1",
                "query": "q",
                "positive_passages": [{"docid": "a", "text": "p"}],
                "negative_passages": [{"docid": "b"}],
            },
            "tevatron",
        )
    assert err.value.field == "negative_passages[0].text"


def test_repeated_passages_are_folded_and_reported():
    t = parse_row(bge(neg=["x is a letter", "y is a letter", "y  is a letter"]), "bge")
    assert [c.text for c in t.negatives] == ["y is a letter"]
    assert t.problems == [
        ("neg[0]", "negative identical to positive pos[0]"),
        ("neg[2]", "duplicate of neg[1]"),
    ]
