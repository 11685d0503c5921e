"""smallfirst: a small local model first, a large one only when needed.

This package holds what the whole app shares: typed settings, the error hierarchy and
the credentials files. The code lives in ``smallfirst.retrieval``, ``smallfirst.ingest`` and
``smallfirst.service``."""
