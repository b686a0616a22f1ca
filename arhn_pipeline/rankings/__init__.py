"""ARHN stage 2: a listwise LLM ranking of each query's candidate set (positive and negatives)."""
