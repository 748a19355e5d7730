"""Benchmarks (python -m mnist_core.bench) and the test servers they share with the tests."""
