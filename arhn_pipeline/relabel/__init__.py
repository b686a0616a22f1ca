"""The relabeled set: one decision per (method, query, candidate), with the rule that fired and its evidence."""
