"""The benchmark: quotagate's hot path measured against its limits and its alternative.

Every figure is a ratio against a baseline measured in the same run, on the same machine, with
the same load generator, because the machines it runs on are shared and noisy. `quotagate bench`
is the entry point; :func:`quotagate.bench.runner.run` does the work.
"""
