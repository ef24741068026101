"""bpjax benchmark suite: ``python -m benchmarks [--quick]`` (not part of the default tests)."""
