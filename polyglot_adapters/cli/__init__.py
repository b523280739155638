"""Command-line interface (``polyglot-adapters``)."""
