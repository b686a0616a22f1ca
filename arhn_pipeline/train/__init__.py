"""Fine-tune a retriever on a collection (original or cleaned) with MultipleNegativesRankingLoss."""
