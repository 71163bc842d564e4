"""The switch: which KV-cache manager a vLLM engine asked for, and which vLLM versions jenga runs on.

``additional_config["kv_cache_manager"]`` carries the choice everywhere (the CLI flag
``--kv-cache-manager`` and ``jenga_vllm.LLM(kv_cache_manager=)`` fold into it), because
``additional_config`` reaches every vLLM process inside the ``VllmConfig``.
"""

from __future__ import annotations

import json
from typing import Any

from jenga_vllm.core.errors import JengaConfigError

SUPPORTED_VLLM = ("0.32.",)
MANAGER_KEY = "kv_cache_manager"
CHOICES = ("vllm", "jenga")
FLAG_HELP = (
    "KV-cache block manager: 'vllm' (default, stock) or 'jenga' (Jenga's two-level LCM page "
    "allocator with per-layer-type policies, from the jenga_vllm plugin)."
)


def as_dict(additional_config: Any) -> dict | None:
    """``additional_config`` as a dict (vLLM accepts a JSON string and parses it later)."""
    if isinstance(additional_config, str):
        return json.loads(additional_config)
    return additional_config


def manager_choice(additional_config: Any) -> str:
    """The manager asked for in ``additional_config``; raises for an unknown name."""
    choice = (as_dict(additional_config) or {}).get(MANAGER_KEY, "vllm")
    if choice not in CHOICES:
        raise JengaConfigError(
            f"invalid kv_cache_manager {choice!r} (choose from {', '.join(map(repr, CHOICES))})"
        )
    return choice


def is_jenga_enabled(vllm_config: Any) -> bool:
    return manager_choice(getattr(vllm_config, "additional_config", None)) == "jenga"


def is_supported_vllm(version: str) -> bool:
    return version.startswith(SUPPORTED_VLLM)


def supported_versions() -> str:
    return "/".join(v + "x" for v in SUPPORTED_VLLM)
