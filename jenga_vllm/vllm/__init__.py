"""Everything of jenga_vllm that runs inside vLLM 0.32 (docs/design.md §1).

``plugin`` (the ``vllm.general_plugins`` entry point and the ledger of every patched vLLM
symbol), ``kv_config`` (vLLM's layer specs → a jenga layout → ``KVCacheConfig``), ``manager``
(vLLM's ``KVCacheManager`` API over ``jenga_vllm.core.JengaCache``), ``worker`` (the model-runner
side: unit zeroing, Mamba checkpoints on CPU), ``attention`` (the Triton backend), ``entrypoints``
(``jenga_vllm.LLM``). Importing this package imports nothing from vLLM; its modules do.
"""
