"""Pretrained models used by the tests and benchmarks (fetched from PyPI wheels, cached)."""
