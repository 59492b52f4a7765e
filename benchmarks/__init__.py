"""Benchmarks of the edge agent against its peers (see benchmarks/README.md)."""
