"""Pruning whole sub-datasets: keep a named list (RLHN's seven as a preset) and/or by measured statistics."""
