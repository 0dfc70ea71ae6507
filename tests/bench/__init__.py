"""Benchmarks of the daemon's footprint and the reference platform's scale (`make bench`).

They live outside the test run (`norecursedirs`): a benchmark reports figures, it never fails on
a timing. `python -m tests.bench.run` runs them all; see `run.py`.
"""
