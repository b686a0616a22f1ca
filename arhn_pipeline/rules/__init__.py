"""The methods' rules (ARHN's relabel / filter, RLHN's techniques) and the decisions they make from a partition's
stored evidence: read by `judge_qualification` (the decisions a judge would make on each reference entry) and by
`relabeled` (the decisions on its own partition), so both apply the same rules with the same settings."""
