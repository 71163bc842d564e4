"""Plain PyTorch references for the Triton kernels: slow, per-sequence, obviously correct.

Both read and write the pool through the same per-layer view the kernels use
(``[num_units, H, N, 2·head_size]``, see ``geometry.py``) and the same page table: token ``p`` of a
sequence lives in the small page ``block_table[seq, p // N]`` at row ``p % N``. They touch only the
tokens a query may attend to, so released pages (null id 0, or stale ids whose bytes now belong to
another type) are never read — exactly the contract the kernels must keep.
"""

from __future__ import annotations

import torch


def reference_kv_write(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store token ``t``'s K/V at slot ``slot_mapping[t] = unit_id·N + row``; ``-1`` is skipped.

    key, value: ``[num_tokens, H, head_size]``; kv_cache: ``[num_units, H, N, 2·head_size]``.
    """
    head_size = key.shape[-1]
    block_size = kv_cache.shape[2]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        page, row = divmod(slot, block_size)
        kv_cache[page, :, row, :head_size] = key[t].to(kv_cache.dtype)
        kv_cache[page, :, row, head_size:] = value[t].to(kv_cache.dtype)


def first_visible_key(query_pos: int, window: int, chunk_size: int) -> int:
    """Oldest key position a causal query at ``query_pos`` may see (window / chunked local)."""
    lo = 0
    if window > 0:
        lo = max(lo, query_pos - window + 1)
    if chunk_size > 0:
        lo = max(lo, (query_pos // chunk_size) * chunk_size)
    return lo


def reference_paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    causal: bool = True,
    window: int = 0,
    chunk_size: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Varlen paged attention in fp32, one sequence at a time.

    query: ``[num_tokens, Hq, head_size]``, sequence ``s`` owns rows
    ``query_start_loc[s]:query_start_loc[s+1]``, which are its last ``q_len`` tokens out of
    ``seq_lens[s]``. kv_cache: ``[num_units, H, N, 2·head_size]`` with ``Hq % H == 0`` (GQA/MQA:
    query head ``h`` reads kv head ``h // (Hq/H)``). ``window > 0``: a query at position ``p`` sees
    keys ``> p - window``; ``chunk_size > 0``: keys in its own chunk ``[p//c·c, p]``; ``softcap``:
    ``cap·tanh(s/cap)`` on scaled scores; ``sinks[h]``: one extra logit per query head in the
    softmax denominator with no value. Returns ``[num_tokens, Hq, head_size]`` in query's dtype.
    """
    if not causal and (window > 0 or chunk_size > 0):
        raise ValueError("window / chunk masks are defined for causal attention only")
    num_tokens, num_q_heads, head_size = query.shape
    num_kv_heads, block_size = kv_cache.shape[1], kv_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    for seq, seq_len in enumerate(seq_lens.tolist()):
        q_lo, q_hi = starts[seq], starts[seq + 1]
        q_len = q_hi - q_lo
        if q_len == 0:
            continue
        q_pos = torch.arange(seq_len - q_len, seq_len)
        # Keys any query of this sequence may see; pages wholly before it may be released.
        k_lo = first_visible_key(int(q_pos[0]), window, chunk_size) if causal else 0
        k_pos = torch.arange(k_lo, seq_len)
        pages = block_table[seq, k_pos // block_size].long()
        rows = kv_cache[pages, :, k_pos % block_size].float()  # [n_keys, H, 2·head_size]
        keys = rows[..., :head_size].repeat_interleave(group, dim=1)
        values = rows[..., head_size:].repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", query[q_lo:q_hi].float(), keys) * scale
        if softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        visible = torch.ones(q_len, len(k_pos), dtype=torch.bool)
        if causal:
            visible &= k_pos[None, :] <= q_pos[:, None]
        if window > 0:
            visible &= q_pos[:, None] - k_pos[None, :] < window
        if chunk_size > 0:
            visible &= k_pos[None, :] >= (q_pos // chunk_size * chunk_size)[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
        if sinks is not None:
            sink = sinks.float()[:, None, None].expand(num_q_heads, q_len, 1)
            probs = torch.cat([scores, sink], dim=-1).softmax(-1)[..., :-1]
        else:
            probs = scores.softmax(-1)
        out[q_lo:q_hi] = torch.einsum("hqk,khd->qhd", probs, values).to(query.dtype)
    return out
