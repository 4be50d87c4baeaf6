"""Tools for users' own conformance tests: hypothesis strategies and the pytest plugin."""
