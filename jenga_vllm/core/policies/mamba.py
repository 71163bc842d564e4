"""Mamba / linear-attention state: one fixed-size state per request, whatever its length.

A state type's block ``i`` covers tokens ``[i·B, (i+1)·B)`` where B = ``block_tokens`` is the
checkpoint interval (in the engine: jenga's attention page, 16 or 32 tokens — not vLLM's inflated
block); its small page holds the state *after* the block's last token once a step has ended
there. The page table is positional: column ``i`` is block ``i``, most columns are None.

Which pages a running request holds (``first_needed_block``): only its newest state (advanced in
place), as vLLM does — at 100 MB a state (Nemotron-H 8B), holding a second one per request would
cost half the batch (benchmarks/results/simulate.md measured it: 205 vs 358 requests on chat).
Across a block boundary the previous state stays until the step that copies it has run (the
caller releases on the processed-token basis).

Allocation (``new_blocks``): a step that grows the request to ``n`` tokens writes the running
state into block ``cdiv(n, B) - 1``, and — when the engine says it exports one (vLLM: the
prefill checkpoint its ``is_mamba_prefill_checkpoint_valid`` allows) — the state after
``(cdiv(n, B) - 1)·B`` tokens, the last boundary a later prompt can hit (a hit leaves one token
to compute), into block ``cdiv(n, B) - 2`` (under the EAGLE/MTP block drop also one block
earlier: ``checkpoint_blocks``). Only those blocks get pages: a page
that no step writes would serve garbage as a prefix hit. Intermediate blocks of a long chunk
stay None.

Which states stay cached (docs/design.md §4, "Mamba retention"): states written while the prompt
is prefilled — every chunk end, the prompt's checkpoint, a shared-prefix junction the scheduler
split at — are kept when superseded, stale (``keeps_released``). Of the states written during
decode only the request's newest complete one stays cached, stale (a chat's turn end, where a
preempted request resumes); it supersedes the older one and the last state the prompt's prefill
left: caching a whole-model state every B tokens of every request would fill the cache with
states no later request starts from (``keeps_newest_decode_state``; the bookkeeping that applies
the rule is core/state_retention.py). When hits drop their last block (EAGLE/MTP) the two newest
stay: such a hit ends a block before the newest (``decode_states_kept``). The state written at a shared-prefix junction the engine
split a prefill at is kept fresh at once (``SmallPage.at_junction``): a second request already
shares that prefix.
Valid hits: multiples of B whose state is cached.

Speculative decoding (``LayerTypeSpec.speculative_blocks`` = K): the engine writes the state after
each of a step's draft tokens into the K columns after the running one (vLLM reads columns
``running .. running + K``), and the next step starts from the slot of its last accepted token.
Those columns get pages with the running one and stay with the request; when the running column
moves on, the old running column keeps the state at its block's end (vLLM's worker copies the
accepted boundary state there) and is released like any other. A step's lookahead tokens (the
draft model's next KV slots) write no state (``growth_tokens``).

Junctions: a hit on an attention prefix uses every block of it, so a block that served one hit
sits on a shared prefix and the evictor keeps it fresh. A hit on a state uses only that state, and
the request that started from it writes its own later ones: in a multi-turn chat each turn starts
from the previous turn's end, after which that state is superseded. Protecting it after one hit
let spent checkpoints hoard the pool (Qwen3-Next, benchmarks/simulate.py multiturn: 400 of its
~800 state pages by step 90) while live turn-end checkpoints, stale, were evicted (hit rate 0.73;
0.89 with this rule). A state is a junction once two requests started from it
(``junction_hits = 2``): a shared system prompt's end is, a spent turn end is not.
"""

from __future__ import annotations

from jenga_vllm.core.policies.base import LayerPolicy, cdiv

# Pages one request holds at most: the previous state (until the step that copies it has run), a
# prefill checkpoint being written, the running state. An engine that writes states only at
# prefill-chunk ends (``LayerTypeSpec.exports_checkpoints`` False: vLLM's Gated DeltaNet) never
# writes the checkpoint page.
MAX_LIVE_STATES = 3


class MambaPolicy(LayerPolicy):
    kind = "mamba"
    is_token_indexed = False
    needs_whole_prefix = False
    junction_hits = 2
    most_pages_held = MAX_LIVE_STATES

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.speculative_blocks = self.spec.speculative_blocks
        held = MAX_LIVE_STATES if self.spec.exports_checkpoints else MAX_LIVE_STATES - 1
        if self.spec.exports_checkpoints and self.spec.hits_drop_last_block:
            held += 1  # two prefill checkpoints a step (checkpoint_blocks)
        self.most_pages_held = held + self.speculative_blocks

    def growth_tokens(self, num_tokens: int, lookahead_tokens: int) -> int:
        return num_tokens - lookahead_tokens

    def covered_tokens(self, table_len: int) -> int:
        return max(0, table_len - self.speculative_blocks) * self.block_tokens

    def first_needed_block(self, num_computed_tokens: int) -> int:
        return max(0, cdiv(num_computed_tokens, self.block_tokens) - 1)

    def release_threshold(self, released_blocks: int) -> float:
        # At the end of the running block (not one token later): the cache drops the decode-time
        # state the running one supersedes before the next block's page is allocated.
        return (released_blocks + 1) * self.block_tokens

    def new_blocks(self, have: int, num_tokens: int, checkpoint: bool = True) -> list[int]:
        newest = self.num_blocks(num_tokens) - 1
        blocks = list(range(max(newest, have), newest + 1 + self.speculative_blocks))
        return [c for c in self.checkpoint_blocks(num_tokens, checkpoint) if c >= have] + blocks

    def checkpoint_blocks(self, num_tokens: int, checkpoint: bool = True) -> tuple[int, ...]:
        """The columns a step growing the request to ``num_tokens`` tokens exports prefill
        checkpoints into, ascending, all before the running column: the state after the last
        block boundary a later prompt can hit — one token left to compute (``(cdiv(n, B) -
        1)·B``, block ``cdiv(n, B) - 2``). Under the EAGLE/MTP block drop a repeat of the prompt
        hits one block before its last whole block (``(n // B - 1)·B``, block ``n // B - 2``,
        vLLM's checkpoint), and a continuation (the next turn, a resumed request) a block before
        its own attention match — the prompt's last whole boundary (block ``n // B - 1``) when
        the answer crosses one boundary: both are exported."""
        if not (checkpoint and self.spec.exports_checkpoints):
            return ()
        bt = self.block_tokens
        if not self.spec.hits_drop_last_block:
            return ((num_tokens - 1) // bt - 1,) if num_tokens > bt else ()
        repeat = num_tokens // bt - 2
        if repeat < 0:
            return ()
        return (repeat, repeat + 1) if num_tokens % bt else (repeat,)

    def live_tokens(self, num_tokens: int) -> int:
        return 0  # one state, whatever the length (counted per request, not per token)

    def max_live_blocks(self, num_tokens: int, in_flight_tokens: int) -> int:
        return min(self.num_blocks(num_tokens) + self.speculative_blocks, self.most_pages_held)

    def keeps_released(self, block: int, prompt_tokens: int | None) -> bool:
        return prompt_tokens is None or (block + 1) * self.block_tokens <= prompt_tokens
