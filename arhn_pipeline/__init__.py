"""arhn-pipeline: find and fix false negatives in retrieval training data (ARHN and RLHN) as Dagster assets."""
