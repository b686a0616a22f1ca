"""Fine-tune a cross-encoder reranker on a collection (original or cleaned) and evaluate it by re-ranking."""
