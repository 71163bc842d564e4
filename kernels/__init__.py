"""Triton kernels that read jenga's heterogeneous page tables, beside their PyTorch references.

Installed as ``jenga_vllm.kernels`` (the source folder is the top-level ``kernels/``). Imports torch
and triton only, never vLLM. ``geometry`` describes where a layer's small pages sit in the shared
int8 pool; ``kv_write`` scatters new K/V into it; ``paged_attention`` runs one varlen batch (prefill
chunks and decode tokens together) over a layer type's page table; ``reference`` holds the slow,
obviously-correct PyTorch versions the tests compare against.
"""

from .geometry import LayerPageGeometry, check_kv_view, unit_and_large_page_bytes
from .kv_write import kv_write
from .paged_attention import (
    MAX_SPLITS,
    LaunchConfig,
    SplitWorkspace,
    choose_config,
    paged_attention,
)
from .reference import reference_kv_write, reference_paged_attention

__all__ = [
    "MAX_SPLITS",
    "LaunchConfig",
    "LayerPageGeometry",
    "SplitWorkspace",
    "check_kv_view",
    "choose_config",
    "kv_write",
    "paged_attention",
    "reference_kv_write",
    "reference_paged_attention",
    "unit_and_large_page_bytes",
]
