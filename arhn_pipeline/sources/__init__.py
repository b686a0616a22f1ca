"""Where sub-datasets come from: the source registry, the row formats it accepts, and streaming readers."""
