"""Mutation testing of the pure modules (`make mutation`, docs/mutation.md).

Outside the test run, as the benchmarks are: it takes most of an hour, and it reports a score
rather than failing. `python -m tests.mutation.run` runs it; see `run.py`.
"""
