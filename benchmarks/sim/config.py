"""The simulated engine's fixed parameters (one place; every module reads them from here)."""

BLOCK_SIZE = 16  # tokens per page, jenga's and vLLM's scheduler block on GPU
DECODE_STRIDE = 16  # engine steps one simulated step stands for (one block of decode)
PREFILL_CHUNK = 8192  # tokens per prefill chunk of one request (vLLM max_num_batched_tokens)
PREFILL_BUDGET = 1 << 18  # large: memory, not the prefill rate, should bound concurrency
LONG_CONTEXT = 131_072
SYSPROMPT_LOAD = 1.0  # offered load of the sysprompt workload, as a fraction of the pool
GIB = 1 << 30
