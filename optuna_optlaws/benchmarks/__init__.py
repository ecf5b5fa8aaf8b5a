"""Benchmarks whose results are written under ``studies/`` by the scripts themselves."""
