"""RLHN: a cascade of judges (an embedding-margin stage and LLM stages) that flags false negatives."""
