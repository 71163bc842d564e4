"""The layer-specific caching API (Jenga §4): one small class per layer type.

A policy answers, for its layer type, four questions the paper's hooks ask. How our methods map
onto the paper (arXiv names / SOSP names):

- ``first_needed_block(n)`` — *active_pages* / ``update_last_access``: after ``n`` computed tokens a
  running request still needs the blocks ``[first_needed_block(n), num_blocks(n))``. Blocks before
  it are released at once into the prefix cache, stamped *stale* (old), so they are evicted before
  anything still useful. Pages a request keeps stay in use; their LRU stamp is taken when the
  request lets them go, one stamp per request per release, shared by all types (balanced eviction).
- ``eviction_rank(block)`` — ``set_prefix_length``: the tie-break inside one release; the token
  position, the same in every type, so eviction removes the same tokens in every type, suffix first
  (aligned eviction).
- ``longest_valid_hit(max_blocks, is_cached)`` — ``get_possible_prefix``: the longest prefix
  length (in common blocks, ≤ max_blocks) this type can serve from cache. The coordinator
  (``JengaCache.find_longest_hit``) intersects all types by iterating to a fixed point.
- ``is_cacheable(block)`` — which full blocks may be named in the prefix index at all.
- ``keeps_released(block, prompt_tokens)`` — whether a page a running request lets go stays
  cached (stale) or is dropped at once (Mamba: only states written while the prompt was
  prefilled; superseded decode-time states are dropped — see mamba.py).
- ``max_live_blocks(num_tokens, in_flight_tokens)`` — the most pages a request of that length
  holds at once (windows also hold the in-flight prefill chunk): the one rule the manager's
  admission cap, the capacity line and the planner all use; ``live_tokens(num_tokens)`` — the
  exact tokens it still needs (the oracle's measure in benchmarks).
- ``junction_hits`` — how many requests must have started from a page before the evictor treats
  it as a shared-prefix junction and never releases it stale (Mamba: 2; see mamba.py).

And what kind of layer type it is, asked wherever the code used to compare kind names:

- ``is_token_indexed`` — pages hold tokens (bytes per token per layer); False: a state type, one
  whole-state page per checkpoint (Mamba / linear attention), whose layers give state bytes.
- ``needs_whole_prefix`` — a hit needs every block from token 0 cached (full attention): its valid
  hits are the unbroken cached runs, found by a forward scan, and no other type can serve a longer
  one, so it is asked first and bounds the others (vLLM's coordinator orders its groups so too).
- ``window_tokens`` — the tokens a running request still attends back to, when that is a window
  (sliding window W, the chunk C of chunked-local attention); 0 otherwise. A type with a window
  releases pages as its requests grow and recycles their slots; a new prompt's first window is
  what later requests sharing it need, so those pages age like any cached page (docs/design.md §4).
- ``uses_token_prefix`` / ``holds_items`` — pages keyed by an encoder input (cross-attention) or
  owned by item-cache entries (vision embeddings) instead of a request's token prefix.

Every hook defaults to full attention; a new layer type overrides what differs and registers
itself in ``POLICY_REGISTRY`` (one line in ``jenga_vllm/core/policies/__init__.py``).

Blocks: a policy's block ``i`` covers tokens ``[i·block_tokens, (i+1)·block_tokens)``. Its prefix
hash is the common-block chain hash at the block's last common block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from jenga_vllm.core.spec import LayerTypeSpec


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class LayerPolicy:
    """Full attention: every token is needed forever; a hit needs an unbroken run from token 0."""

    kind: ClassVar[str] = "full"
    is_token_indexed: ClassVar[bool] = True  # False: a state type (whole-state pages)
    needs_whole_prefix: ClassVar[bool] = True  # a hit needs every block from token 0 cached
    uses_token_prefix: ClassVar[bool] = True  # False: pages keyed by an encoder input, not tokens
    junction_hits: ClassVar[int] = 1
    holds_items: ClassVar[bool] = False  # True: pages of item-cache entries (JengaCache.hold_item)
    most_pages_held: ClassVar[int | None] = None  # pages one request holds at most (None: grows)
    speculative_blocks: int = 0  # state types: slots for the states after a step's draft tokens
    # Of the pages ``keeps_released`` does not keep, the request's newest stays cached (a state
    # type's turn end); False drops them all.
    keeps_newest_decode_state: ClassVar[bool] = True

    @property
    def decode_states_kept(self) -> int:
        """State types: how many of a request's newest decode-time states stay cached — its
        newest (``keeps_newest_decode_state``) and, when hits drop their last block
        (``LayerTypeSpec.hits_drop_last_block``), the one before it, where such a hit ends."""
        if not self.keeps_newest_decode_state:
            return 0
        return 2 if self.spec.hits_drop_last_block else 1

    def __init__(self, spec: LayerTypeSpec, block_tokens: int, hash_block_tokens: int) -> None:
        self.spec = spec
        self.block_tokens = block_tokens
        self.hash_ratio = block_tokens // hash_block_tokens

    @classmethod
    def validate_spec(cls, spec: LayerTypeSpec, max_model_len: int | None) -> None:
        """Raise JengaConfigError for specs this kind cannot serve."""

    @property
    def window_tokens(self) -> int:
        """Tokens a running request still attends back to, when that is a window (0: none)."""
        return 0

    def num_blocks(self, num_tokens: int) -> int:
        """Page-table length for ``num_tokens`` tokens."""
        return cdiv(num_tokens, self.block_tokens)

    def first_needed_block(self, num_computed_tokens: int) -> int:
        """Blocks before this index are no longer needed by a request past this many tokens."""
        return 0

    def release_threshold(self, released_blocks: int) -> float:
        """Fewest computed tokens at which ``first_needed_block`` passes ``released_blocks``.

        Lets the cache skip ``release_unneeded`` in O(1) on most steps; ``inf`` = never.
        """
        return float("inf")

    def growth_tokens(self, num_tokens: int, lookahead_tokens: int) -> int:
        """The tokens this type's table grows to when a step asks for ``num_tokens`` of which
        ``lookahead_tokens`` are speculative lookahead slots (the next step's draft KV): all of
        them for token-indexed types; a state type writes states for the model's tokens only."""
        return num_tokens

    def covered_tokens(self, table_len: int) -> int:
        """Tokens a table of ``table_len`` blocks holds without a new page."""
        return table_len * self.block_tokens

    def new_blocks(self, have: int, num_tokens: int, checkpoint: bool = True) -> range | list[int]:
        """Blocks to allocate when a table of ``have`` blocks grows to ``num_tokens`` tokens.

        ``checkpoint`` (state types only): the engine also writes the state at the last block
        boundary this growth crosses, so that block gets a page too."""
        return range(have, self.num_blocks(num_tokens))

    def checkpoint_blocks(self, num_tokens: int, checkpoint: bool = True) -> tuple[int, ...]:
        """State types: the columns a step growing the request to ``num_tokens`` tokens writes
        prefill checkpoints into; none for token-indexed types."""
        return ()

    def max_live_blocks(self, num_tokens: int, in_flight_tokens: int) -> int:
        """Most pages one request of ``num_tokens`` tokens holds at once, while up to
        ``in_flight_tokens`` of them are scheduled but not yet computed."""
        return self.num_blocks(num_tokens)

    def live_tokens(self, num_tokens: int) -> int:
        """Tokens whose KV a request past ``num_tokens`` tokens still needs for its next token
        (exactly, no pages: the oracle's measure)."""
        return num_tokens

    def keeps_released(self, block: int, prompt_tokens: int | None) -> bool:
        """Whether a page released while its request runs stays cached (stale)."""
        return True

    def eviction_rank(self, block: int) -> int:
        """Larger ranks are evicted first among pages released together: the token position."""
        return block * self.block_tokens

    def is_cacheable(self, block: int) -> bool:
        return True

    def hash_index(self, block: int) -> int:
        """Index into the common-block hash chain that names this type's block."""
        return (block + 1) * self.hash_ratio - 1

    def longest_valid_hit(self, max_blocks: int, is_cached: Callable[[int], bool]) -> int:
        """Longest hit ≤ ``max_blocks`` common blocks; ``is_cached(i)`` asks about *this type's*
        block i. Generic rule: length L (tokens) is valid when L is on this type's block grid and
        every block in ``[first_needed_block(L), L/block_tokens)`` is cached.
        """
        ratio = self.hash_ratio
        length = max_blocks // ratio  # in this type's blocks
        cached_memo: dict[int, bool] = {}

        def cached(i: int) -> bool:
            hit = cached_memo.get(i)
            if hit is None:
                hit = cached_memo[i] = is_cached(i)
            return hit

        while length > 0:
            first = self.first_needed_block(length * self.block_tokens)
            missing = next((i for i in range(length - 1, first - 1, -1) if not cached(i)), None)
            if missing is None:
                return length * ratio
            length = missing  # no length covering a missing block can be valid except via first
        return 0


class FullAttentionPolicy(LayerPolicy):
    """Full attention, with a forward scan (its valid hits are downward closed)."""

    def longest_valid_hit(self, max_blocks: int, is_cached: Callable[[int], bool]) -> int:
        n = max_blocks // self.hash_ratio
        for i in range(n):
            if not is_cached(i):
                return i * self.hash_ratio
        return n * self.hash_ratio
