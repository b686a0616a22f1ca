"""Stage 0: stream a sub-dataset's source into the normalized DuckDB tables, quarantining bad rows."""
