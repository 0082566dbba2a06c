"""Helpers the test suite and the benchmarks share: real servers started on loopback."""
