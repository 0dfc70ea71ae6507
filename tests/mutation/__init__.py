"""Mutation testing of the pure modules (`make mutation`, docs/mutation.md).

Outside the test run, as the benchmarks are: it takes about 20 minutes, and it reports a score
rather than passing. `python -m tests.mutation.run` runs it; see `run.py`.
"""
