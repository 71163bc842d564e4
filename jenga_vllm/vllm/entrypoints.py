"""``jenga_vllm.LLM``: vLLM's offline ``LLM`` with a ``kv_cache_manager=`` keyword.

``jenga_vllm.LLM(model, kv_cache_manager="jenga", ...)`` is the same as
``vllm.LLM(model, additional_config={"kv_cache_manager": "jenga"}, ...)``; every other keyword goes
to vLLM unchanged. It makes sure the plugin's patches are installed in this process first, so the
switch works even where vLLM's plugin discovery is limited (``VLLM_PLUGINS``).
"""

from __future__ import annotations

from typing import Any

from vllm import LLM as VllmLLM

from jenga_vllm.vllm import plugin


class LLM(VllmLLM):
    """vLLM's LLM; ``kv_cache_manager`` is "vllm" (default, stock) or "jenga"."""

    def __init__(self, model: str, *args: Any, kv_cache_manager: str = "vllm", **kwargs: Any):
        additional = dict(kwargs.pop("additional_config", None) or {})
        if kv_cache_manager != "vllm" or plugin.MANAGER_KEY not in additional:
            additional[plugin.MANAGER_KEY] = kv_cache_manager
        plugin.manager_choice(additional)  # unknown names fail here, with the choices
        plugin.install()
        super().__init__(model, *args, additional_config=additional, **kwargs)
