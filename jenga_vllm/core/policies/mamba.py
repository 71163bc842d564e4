"""Mamba / linear-attention state: one fixed-size state per request, whatever its length.

A state type's block ``i`` covers tokens ``[i·B, (i+1)·B)`` where B = ``block_tokens`` is the
checkpoint interval; its small page holds the state *after* the block's last token. A running
request needs only the page of its latest state (plus the one being written): blocks before
``cdiv(n, B) - 1`` are released at once. Released states are cached only at checkpoint
boundaries (every block boundary on this type's grid), stamped stale, so old checkpoints go first.
Valid hits: multiples of B whose state is cached, or 0.

Junctions: a hit on an attention prefix uses every block of it, so a block that served one hit
sits on a shared prefix and the evictor keeps it fresh. A hit on a state uses only that state, and
the request that started from it writes its own later ones: in a multi-turn chat each turn starts
from the previous turn's last checkpoint, after which that checkpoint is superseded. Protecting it
after one hit let spent checkpoints hoard the pool (Qwen3-Next, benchmarks/simulate.py
multiturn: 400 of its ~800 state pages by step 90) while live turn-end checkpoints, stale, were
evicted (hit rate 0.73; 0.89 with this rule). A state is a junction once two requests started
from it (``junction_hits = 2``): a shared system prompt's end is, a spent turn end is not.

Allocation: growing by many tokens at once (a prefill chunk) allocates only two state pages: the
newest state and the last checkpoint the chunk crosses (the prompt's longest reusable prefix),
never one page per interval; the engine writes the state at that boundary into the latter.
"""

from __future__ import annotations

from jenga_vllm.core.policies.base import LayerPolicy, cdiv


class MambaPolicy(LayerPolicy):
    kind = "mamba"
    is_token_indexed = False
    junction_hits = 2

    def first_needed_block(self, num_computed_tokens: int) -> int:
        return max(0, cdiv(num_computed_tokens, self.block_tokens) - 1)

    def release_threshold(self, released_blocks: int) -> float:
        return (released_blocks + 1) * self.block_tokens + 1

    def new_blocks(self, have: int, num_tokens: int) -> list[int]:
        newest = self.num_blocks(num_tokens) - 1
        checkpoint = num_tokens // self.block_tokens - 1
        return [b for b in sorted({checkpoint, newest}) if b >= have]
