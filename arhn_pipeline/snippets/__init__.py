"""ARHN stage 1: for every (query, candidate) pair, an answer snippet copied verbatim from the passage, or NO_ANSWER."""
