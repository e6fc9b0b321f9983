"""Runnable experiments: benchmarks and reproduction scripts."""
