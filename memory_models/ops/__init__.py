"""Parallel operators, each with a slow reference implementation kept beside it for tests."""
