"""The ``fr-fast`` command line: one module per command over the library; nothing in the library imports it."""
