"""The trace-driven KV-cache simulator behind benchmarks/simulate.py (docs/design.md §7).

``workloads`` (seeded traces), ``managers`` (the peers: the jenga core, vLLM 0.32's real
KVCacheManager on vLLM's own layout, the exact-bytes oracle — each through public APIs only),
``oracle`` (the exact bytes running requests need), ``loop`` (the simulated scheduler) and
``report`` (markdown and plots); ``replay`` runs a measured engine trace through it
(benchmarks/e2e_mamba_prefix.py's predicted hit rates).
"""
