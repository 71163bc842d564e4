"""jenga's vLLM attention backend (``backend.py``), registered from the plugin's worker side.

Importing this package is cheap: vLLM and the kernels load on the first call.
"""

from __future__ import annotations

from typing import Any

BACKEND_PATH = "jenga_vllm.vllm.attention.backend.JengaAttentionBackend"


def register_jenga_attention_backend() -> Any:
    """Register jenga's attention backend with vLLM's registry in this process (idempotent).

    CUDA: ``AttentionBackendEnum.CUSTOM``. CPU: replaces ``CPU_ATTN`` only when
    ``JENGA_ATTENTION_BACKEND=triton`` (interpreter mode, tests). Returns the enum member or None.
    """
    from jenga_vllm.vllm.attention.backend import register_jenga_attention_backend as register

    return register()


def apply_jenga_attention_default(vllm_config: Any) -> bool:
    """Make jenga's backend the default attention backend of a jenga run on CUDA.

    Call where the engine config is built for ``--kv-cache-manager jenga``. Sets
    ``attention_config.backend = CUSTOM`` unless the platform is not CUDA, the user chose a
    backend (``--attention-backend``), or ``JENGA_ATTENTION_BACKEND=vllm`` asks for vLLM's own.
    Returns whether jenga's backend is selected.
    """
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    if not current_platform.is_cuda_alike() or jenga_attention_backend_choice() == "vllm":
        return False
    attention = vllm_config.attention_config
    if attention.backend is None:
        attention.backend = AttentionBackendEnum.CUSTOM
    return attention.backend == AttentionBackendEnum.CUSTOM


def unregister_jenga_attention_backend() -> None:
    """Undo the registration in this process (tests)."""
    from jenga_vllm.vllm.attention.backend import unregister_jenga_attention_backend as unregister

    unregister()


def jenga_attention_backend_choice() -> str:
    """``JENGA_ATTENTION_BACKEND``: ``"triton"``, ``"vllm"`` or ``"default"`` (unset)."""
    from jenga_vllm.vllm.attention.backend import jenga_attention_backend_choice as choice

    return choice()


__all__ = [
    "BACKEND_PATH",
    "apply_jenga_attention_default",
    "jenga_attention_backend_choice",
    "register_jenga_attention_backend",
    "unregister_jenga_attention_backend",
]
