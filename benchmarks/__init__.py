"""jenga_vllm's benchmarks: each script runs as ``python -m benchmarks.<name>`` from the
repository root; what several share (engine runners, phase profiles, workloads) lives in
``benchmarks.common``, which the tests use too."""
