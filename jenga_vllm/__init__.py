"""jenga_vllm: Jenga's heterogeneous KV-cache manager as a vLLM 0.32 plugin.

``import jenga_vllm`` is cheap and never imports vLLM; ``jenga_vllm.LLM`` does, on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "LLM":
        from jenga_vllm.vllm.entrypoints import LLM

        return LLM
    raise AttributeError(f"module 'jenga_vllm' has no attribute {name!r}")
