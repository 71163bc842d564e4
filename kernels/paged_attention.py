"""Unified paged attention over jenga's heterogeneous page tables: one launch per varlen batch.

Shapes and layout
    query          ``[num_tokens, Hq, head_size]``; sequence ``s`` owns rows
                   ``query_start_loc[s]:query_start_loc[s+1]`` — its last ``q_len`` tokens. A batch
                   freely mixes prefill chunks (``q_len > 1``) and decode tokens (``q_len == 1``).
    kv_cache       ``[num_units, H, N, 2·head_size]``: one layer's view of the int8 pool
                   (geometry.py). The page of unit id ``b`` is read at ``b·stride(0)``, so the unit
                   size, the layer's offset inside its type's small page and overlapping page
                   strides all come from the view. Row ``(b, h, r)`` holds K then V.
    block_table    ``[num_seqs, max_pages]`` int32 unit ids of this layer type's small pages; token
                   ``p`` of sequence ``s`` is row ``p % N`` of page ``block_table[s, p // N]``.
    seq_lens       ``[num_seqs]`` int32 tokens in the KV cache, including this step's tokens.
    out            ``[num_tokens, Hq, head_size]``.

Masks: causal; ``window`` (a query at ``p`` sees keys ``> p - window``); ``chunk_size`` (chunked
local: keys in ``[p//c·c, p]``); GQA/MQA with ``Hq % H == 0``; ``softcap``; per-head ``sinks``.

Never-read contract: a program loads only key positions in ``[first visible key of its first
query, last query + 1)``, so pages released by a window or chunk (null id 0, or a stale id whose
bytes now belong to another type) are never touched; tiles wholly outside are skipped, partial
tiles mask their loads per token. Slots past ``seq_len`` are never read either.

Work split: program ``(q_block, kv_head, split)`` handles ``BLOCK_Q`` query tokens times the
``Hq/H`` query heads of one kv head (``BLOCK_M`` rows of one ``tl.dot``), so each K/V tile is
loaded once per kv head. Small decode batches also split the key range (flash-decoding): each
split writes fp32 partials and a tiny second kernel merges them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .geometry import check_kv_view

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # scores live in the exp2 domain
MAX_SPLITS = 32


@dataclass(frozen=True, slots=True)
class LaunchConfig:
    """Tile shapes of one launch. ``block_m`` query rows (tokens × heads of one kv head) against
    ``tile_n`` keys per step; ``num_splits > 1`` splits each sequence's keys (decode)."""

    block_m: int
    tile_n: int
    num_warps: int
    num_stages: int
    num_splits: int = 1


@dataclass(slots=True)
class SplitWorkspace:
    """fp32 scratch for split-key partials: ``out [T, Hq, S, D_pad]``, ``max``/``sum [T, Hq, S]``.

    jenga's metadata builder pre-allocates one per layer group so that split-key decode allocates
    nothing inside a CUDA graph; when none fits, the launcher allocates one for the call.
    """

    out: torch.Tensor
    max: torch.Tensor
    sum: torch.Tensor

    def fits(self, num_tokens: int, num_q_heads: int, num_splits: int, head_pad: int) -> bool:
        return (
            self.out.shape[0] >= num_tokens
            and self.out.shape[1] == num_q_heads
            and self.out.shape[2] >= num_splits
            and self.out.shape[3] >= head_pad
        )


@triton.jit
def _find_seq(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q: tl.constexpr):
    """Sequence of global q block ``q_block``: sequence ``s`` owns blocks from
    ``query_start_loc[s] // BLOCK_Q + s`` on (an upper bound, so some blocks are empty)."""
    lo: tl.int32 = 0  # annotated: loop-carried values must keep one type when compiled
    hi: tl.int32 = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """fp32-accumulated ``a @ b``."""
    if DOT_IN_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.heuristics(
    {
        "HEAD_PAD": lambda args: triton.next_power_of_2(args["HEAD_SIZE"]),
        "USE_SOFTCAP": lambda args: args["softcap"] > 0,
        "USE_SINKS": lambda args: args["sinks_ptr"] is not None,
        "USE_WINDOW": lambda args: args["window"] > 0,
        "USE_CHUNK": lambda args: args["chunk_size"] > 0,
        "IS_SPLIT": lambda args: args["NUM_SPLITS"] > 1,
        # Triton's interpreter (CPU tests) multiplies bf16 tiles as raw uint16 bits; round to
        # bf16 as the GPU does, then multiply in fp32 there.
        "DOT_IN_FP32": lambda args: (
            args["query_ptr"].device.type == "cpu" and args["query_ptr"].dtype == torch.bfloat16
        ),
    }
)
@triton.jit
def _paged_attention_kernel(
    out_ptr,
    query_ptr,
    kv_ptr,
    block_table_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    sinks_ptr,
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    scale,
    softcap,
    window,
    chunk_size,
    num_seqs,
    stride_q_tok,
    stride_q_head,
    stride_o_tok,
    stride_o_head,
    stride_kv_page: tl.int64,
    stride_kv_head: tl.int64,
    stride_kv_row: tl.int64,
    stride_bt_seq,
    stride_po_tok,
    stride_po_head,
    stride_po_split,
    stride_pm_tok,
    stride_pm_head,
    HEAD_SIZE: tl.constexpr,
    QUERIES_PER_KV: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    TILE_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_SINKS: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_CHUNK: tl.constexpr,
    IS_SPLIT: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq = _find_seq(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    q_block_local = q_block - (q_start // BLOCK_Q + seq)
    if q_block_local * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    # Rows: BLOCK_Q query tokens × QUERIES_PER_KV heads sharing this kv head.
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_PAD)
    offs_n = tl.arange(0, TILE_N)
    q_idx = q_block_local * BLOCK_Q + offs_m // QUERIES_PER_KV
    q_head = kv_head * QUERIES_PER_KV + offs_m % QUERIES_PER_KV
    row_valid = (q_idx < q_len) & (offs_m < BLOCK_Q * QUERIES_PER_KV)
    q_pos = context_len + q_idx
    d_valid = offs_d < HEAD_SIZE
    q_tok = (q_start + q_idx).to(tl.int64)
    q = tl.load(
        query_ptr
        + q_tok[:, None] * stride_q_tok
        + q_head[:, None] * stride_q_head
        + offs_d[None, :],
        mask=row_valid[:, None] & d_valid[None, :],
        other=0.0,
    )

    # Keys this q block may see: [kv_lo, kv_hi). Everything outside stays unread.
    first_q = context_len + q_block_local * BLOCK_Q
    last_q = context_len + tl.minimum(q_block_local * BLOCK_Q + BLOCK_Q, q_len) - 1
    if IS_CAUSAL:
        kv_hi = last_q + 1
    else:
        kv_hi = seq_len
    kv_lo = 0
    if USE_WINDOW:
        kv_lo = tl.maximum(kv_lo, first_q - window + 1)
    if USE_CHUNK:
        kv_lo = tl.maximum(kv_lo, (first_q // chunk_size) * chunk_size)
    tile_lo = kv_lo // TILE_N
    tile_hi = tl.cdiv(kv_hi, TILE_N)
    if IS_SPLIT:
        tiles_per_split = tl.cdiv(tile_hi - tile_lo, NUM_SPLITS)
        tile_lo = tile_lo + split * tiles_per_split
        tile_hi = tl.minimum(tile_lo + tiles_per_split, tile_hi)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    qk_scale = scale * LOG2E
    table_row = block_table_ptr + seq.to(tl.int64) * stride_bt_seq
    kv_head_base = kv_ptr + kv_head.to(tl.int64) * stride_kv_head

    for tile in range(tile_lo, tile_hi):
        k_pos = tile * TILE_N + offs_n
        k_valid = (k_pos >= kv_lo) & (k_pos < kv_hi)
        page = tl.load(table_row + k_pos // BLOCK_SIZE, mask=k_valid, other=0).to(tl.int64)
        row_ptr = kv_head_base + page * stride_kv_page + (k_pos % BLOCK_SIZE) * stride_kv_row
        kv_mask = k_valid[:, None] & d_valid[None, :]
        k = tl.load(row_ptr[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(row_ptr[:, None] + HEAD_SIZE + offs_d[None, :], mask=kv_mask, other=0.0)

        s = _dot(q, tl.trans(k), DOT_PRECISION, DOT_IN_FP32)
        if USE_SOFTCAP:
            s = s * scale
            # cap·tanh(s/cap) via one exp: saturates cleanly for large |s|.
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
            s = s * LOG2E
        else:
            s = s * qk_scale
        visible = row_valid[:, None] & k_valid[None, :]
        if IS_CAUSAL:
            visible = visible & (k_pos[None, :] <= q_pos[:, None])
        if USE_WINDOW:
            visible = visible & (q_pos[:, None] - k_pos[None, :] < window)
        if USE_CHUNK:
            visible = visible & (k_pos[None, :] >= ((q_pos // chunk_size) * chunk_size)[:, None])
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION, DOT_IN_FP32)
        m_i = m_new

    if IS_SPLIT:
        po = (
            part_out_ptr
            + q_tok[:, None] * stride_po_tok
            + q_head[:, None] * stride_po_head
            + split * stride_po_split
            + offs_d[None, :]
        )
        tl.store(po, acc, mask=row_valid[:, None] & (offs_d < HEAD_PAD)[None, :])
        pm = q_tok * stride_pm_tok + q_head * stride_pm_head + split
        tl.store(part_max_ptr + pm, m_i, mask=row_valid)
        tl.store(part_sum_ptr + pm, l_i, mask=row_valid)
    else:
        if USE_SINKS:
            sink = tl.load(sinks_ptr + q_head, mask=row_valid, other=0.0).to(tl.float32)
            sink = sink * LOG2E
            m_new = tl.maximum(m_i, sink)
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.exp2(sink - m_new)
            acc = acc * alpha[:, None]
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
        o = acc / l_i[:, None]
        tl.store(
            out_ptr
            + q_tok[:, None] * stride_o_tok
            + q_head[:, None] * stride_o_head
            + offs_d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=row_valid[:, None] & d_valid[None, :],
        )


@triton.heuristics(
    {
        "HEAD_PAD": lambda args: triton.next_power_of_2(args["HEAD_SIZE"]),
        "USE_SINKS": lambda args: args["sinks_ptr"] is not None,
    }
)
@triton.jit
def _merge_splits_kernel(
    out_ptr,
    sinks_ptr,
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    stride_o_tok,
    stride_o_head,
    stride_po_tok,
    stride_po_head,
    stride_po_split,
    stride_pm_tok,
    stride_pm_head,
    HEAD_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    USE_SINKS: tl.constexpr,
):
    """out[t, h] = Σ_s acc_s·2^(m_s-M) / (Σ_s l_s·2^(m_s-M) [+ 2^(sink-M)]); empty splits weigh 0."""
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, NUM_SPLITS)
    offs_d = tl.arange(0, HEAD_PAD)
    pm = tok * stride_pm_tok + head * stride_pm_head + splits
    m_s = tl.load(part_max_ptr + pm)
    l_s = tl.load(part_sum_ptr + pm)
    m = tl.max(m_s, axis=0)
    if USE_SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32) * LOG2E
        m = tl.maximum(m, sink)
    w = tl.exp2(m_s - m)
    total = tl.sum(l_s * w, axis=0)
    if USE_SINKS:
        total += tl.exp2(sink - m)
    acc = tl.load(
        part_out_ptr
        + tok * stride_po_tok
        + head * stride_po_head
        + splits[:, None] * stride_po_split
        + offs_d[None, :]
    )
    o = tl.sum(acc * w[:, None], axis=0) / total
    tl.store(
        out_ptr + tok * stride_o_tok + head * stride_o_head + offs_d,
        o.to(out_ptr.dtype.element_ty),
        mask=offs_d < HEAD_SIZE,
    )


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def choose_config(
    head_size: int,
    queries_per_kv: int,
    num_kv_heads: int,
    num_seqs: int,
    max_query_len: int,
    device: torch.device,
) -> LaunchConfig:
    """Tile shapes from shapes known on the host (CUDA-graph safe: no sequence lengths).

    Tuned on an H100 (benchmarks/results/kernels.md, sweep section):
    - decode batches (``max_query_len == 1``) stream K/V: 16 query rows, key tiles of 128 keys at
      d=64 and 32 keys from d=128 up (register pressure, see below), 3 pipeline stages; keys are
      split only while the ``num_seqs·H`` programs cannot give every SM one, into enough
      splits for ~2 programs per SM;
    - batches with prefill chunks are compute-bound: 64 query rows × 64 keys, 4 warps.
    """
    head_pad = triton.next_power_of_2(head_size)
    group_pad = triton.next_power_of_2(queries_per_kv)
    if device.type != "cuda":  # interpreter: small tiles keep CPU tests fast
        return LaunchConfig(block_m=max(16, group_pad), tile_n=16, num_warps=4, num_stages=1)
    if max_query_len <= 1:
        programs = num_seqs * num_kv_heads
        sms = _num_sms(device)
        splits = 1
        if programs < sms:
            splits = min(MAX_SPLITS, triton.next_power_of_2(math.ceil(2 * sms / max(programs, 1))))
        return LaunchConfig(
            block_m=max(16, group_pad),
            # 32-key tiles from head_dim 128 up: the windowed variant needs 150 registers with
            # 64-key tiles (3 programs/SM, two waves at batch 32); 109 with 32 (sm_90, triton
            # 3.6), and full layers time the same either way (372 vs 373 µs).
            tile_n=max(16, min(128, 4096 // head_pad if head_pad >= 128 else 8192 // head_pad)),
            num_warps=4,
            num_stages=3,
            num_splits=splits,
        )
    return LaunchConfig(
        block_m=max(64, group_pad),
        tile_n=64 if head_pad <= 128 else 32,
        num_warps=4,
        num_stages=2,
    )


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    max_query_len: int,
    out: torch.Tensor | None = None,
    causal: bool = True,
    window: int = 0,
    chunk_size: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
    config: LaunchConfig | None = None,
    workspace: SplitWorkspace | None = None,
) -> torch.Tensor:
    """Attention of a varlen batch over one layer's pages (see the module docstring for shapes).

    ``max_query_len`` is the host-side max of ``q_len`` (vLLM metadata carries it); it picks
    decode or prefill tiles. ``config`` overrides the tile choice (tests, benchmarks).
    ``workspace`` is the split-key scratch; without one it is allocated when a split is chosen.
    """
    num_tokens, num_q_heads, head_size = query.shape
    check_kv_view(kv_cache, head_size)
    num_kv_heads, block_size = kv_cache.shape[1], kv_cache.shape[2]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    if query.stride(-1) != 1:
        raise ValueError("query needs a contiguous head dim; call .contiguous() first")
    if not causal and (window > 0 or chunk_size > 0):
        raise ValueError("window / chunk_size need causal=True")
    if query.dtype != kv_cache.dtype:
        raise ValueError(f"query dtype {query.dtype} != kv cache dtype {kv_cache.dtype}")
    if sinks is not None and sinks.shape[0] != num_q_heads:
        raise ValueError(f"sinks has {sinks.shape[0]} entries for {num_q_heads} query heads")
    if block_table.stride(-1) != 1:
        raise ValueError("block_table rows must be contiguous")
    if out is None:
        out = torch.empty_like(query)
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    queries_per_kv = num_q_heads // num_kv_heads
    if config is None:
        config = choose_config(
            head_size, queries_per_kv, num_kv_heads, num_seqs, max_query_len, query.device
        )
    if config.block_m < queries_per_kv:
        raise ValueError(f"block_m {config.block_m} < {queries_per_kv} query heads per kv head")
    head_pad = triton.next_power_of_2(head_size)
    num_splits = config.num_splits
    if num_splits & (num_splits - 1) or not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(
            f"num_splits must be a power of two in [1, {MAX_SPLITS}], got {num_splits}"
        )
    if num_splits > 1:
        if workspace is None or not workspace.fits(num_tokens, num_q_heads, num_splits, head_pad):
            workspace = SplitWorkspace(
                out=torch.empty(
                    num_tokens,
                    num_q_heads,
                    num_splits,
                    head_pad,
                    dtype=torch.float32,
                    device=query.device,
                ),
                max=torch.empty(
                    num_tokens, num_q_heads, num_splits, dtype=torch.float32, device=query.device
                ),
                sum=torch.empty(
                    num_tokens, num_q_heads, num_splits, dtype=torch.float32, device=query.device
                ),
            )
        if workspace.max.stride(-1) != 1 or workspace.out.stride(-1) != 1:
            raise ValueError("split workspace must be contiguous in its last dim")
        part_out, part_max, part_sum = workspace.out, workspace.max, workspace.sum
        po_strides = part_out.stride()[:3]
        pm_strides = part_max.stride()[:2]
    else:
        part_out = part_max = part_sum = None
        po_strides = (0, 0, 0)
        pm_strides = (0, 0)

    block_q = config.block_m // queries_per_kv
    grid = (num_tokens // block_q + num_seqs, num_kv_heads, num_splits)
    _paged_attention_kernel[grid](
        out,
        query,
        kv_cache,
        block_table,
        query_start_loc,
        seq_lens,
        sinks,
        part_out,
        part_max,
        part_sum,
        float(scale),
        float(softcap),
        int(window),
        int(chunk_size),
        num_seqs,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        block_table.stride(0),
        *po_strides,
        *pm_strides,
        HEAD_SIZE=head_size,
        QUERIES_PER_KV=queries_per_kv,
        BLOCK_SIZE=block_size,
        BLOCK_M=config.block_m,
        BLOCK_Q=block_q,
        TILE_N=config.tile_n,
        NUM_SPLITS=num_splits,
        IS_CAUSAL=causal,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_tokens, num_q_heads)](
            out,
            sinks,
            part_out,
            part_max,
            part_sum,
            out.stride(0),
            out.stride(1),
            *po_strides,
            *pm_strides,
            HEAD_SIZE=head_size,
            NUM_SPLITS=num_splits,
            num_warps=4 if head_pad <= 128 else 8,
        )
    return out
