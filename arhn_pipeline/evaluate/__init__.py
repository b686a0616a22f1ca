"""nDCG@10 and Recall@100 of retrievers on BEIR-layout sets, every variant side by side."""
