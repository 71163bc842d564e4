"""Triton scatter of a step's new K/V into jenga's shared pool.

Shapes and layout
    key, value    ``[num_tokens, H, head_size]`` (any token/head strides, contiguous last dim)
    kv_cache      ``[num_units, H, N, 2·head_size]`` per-layer view of the int8 pool (geometry.py):
                  page of unit id ``b``, head ``h``, row ``r`` holds K in ``[:head_size]`` and V in
                  ``[head_size:]``; strides come from the view, so any unit size / layer offset /
                  overlapping page stride works
    slot_mapping  ``[num_slots]`` int, ``unit_id·N + row`` (vLLM's slot formula with unit ids as
                  block ids); ``-1`` = padding token, skipped. Token ``t < num_slots`` is written;
                  key/value may hold more (CUDA-graph padding) rows, which are ignored

One program per token writes all heads. The kernel is type-agnostic: the caller passes the view of
whichever layer (of whichever layer type) it is writing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .geometry import check_kv_view


@triton.heuristics(
    {
        "HEAD_PAD": lambda args: triton.next_power_of_2(args["HEAD_SIZE"]),
        "HEADS_PAD": lambda args: triton.next_power_of_2(args["NUM_KV_HEADS"]),
    }
)
@triton.jit
def _kv_write_kernel(
    key_ptr,
    value_ptr,
    kv_ptr,
    slot_mapping_ptr,
    stride_k_tok,
    stride_k_head,
    stride_v_tok,
    stride_v_head,
    stride_kv_page: tl.int64,
    stride_kv_head: tl.int64,
    stride_kv_row: tl.int64,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    HEADS_PAD: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    page = slot // BLOCK_SIZE
    row = slot % BLOCK_SIZE
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, HEAD_PAD)
    mask = (heads < NUM_KV_HEADS)[:, None] & (dims < HEAD_SIZE)[None, :]
    k = tl.load(
        key_ptr + token * stride_k_tok + heads[:, None] * stride_k_head + dims[None, :], mask=mask
    )
    v = tl.load(
        value_ptr + token * stride_v_tok + heads[:, None] * stride_v_head + dims[None, :], mask=mask
    )
    dst = kv_ptr + page * stride_kv_page + row * stride_kv_row + heads[:, None] * stride_kv_head
    tl.store(dst + dims[None, :], k.to(kv_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HEAD_SIZE + dims[None, :], v.to(kv_ptr.dtype.element_ty), mask=mask)


def kv_write(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write ``key``/``value`` rows into ``kv_cache`` at ``slot_mapping`` (see module docstring)."""
    num_kv_heads, head_size = key.shape[1], key.shape[2]
    num_tokens = slot_mapping.shape[0]
    check_kv_view(kv_cache, head_size)
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} != key shape {tuple(key.shape)}")
    if kv_cache.shape[1] != num_kv_heads:
        raise ValueError(f"kv_cache has {kv_cache.shape[1]} kv heads, key has {num_kv_heads}")
    if key.stride(-1) != 1 or value.stride(-1) != 1:
        raise ValueError("key/value need a contiguous head dim; call .contiguous() first")
    if key.shape[0] < num_tokens:
        raise ValueError(f"slot_mapping has {num_tokens} entries for {key.shape[0]} tokens")
    if num_tokens == 0:
        return
    _kv_write_kernel[(num_tokens,)](
        key,
        value,
        kv_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_SIZE=head_size,
        BLOCK_SIZE=kv_cache.shape[2],
    )
