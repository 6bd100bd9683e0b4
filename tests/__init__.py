"""Ironvisor's Python test suites and harnesses (run pytest from the repository root)."""
