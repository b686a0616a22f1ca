"""Every cleaning method side by side: changes, agreement with references, the gate, downstream figures."""
