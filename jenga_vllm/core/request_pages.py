"""A running request's page tables: the record JengaCache keeps per request.

What it owns: per layer type, the request's page table — a list indexed by the type's block
number, ``None`` marking a block the type no longer needs (vLLM's null block, unit id 0) — how
many leading blocks it released, how many blocks it offered to the prefix index, the large pages
it owns (``PageOwner``, for request-aware placement), what it was admitted with (prefix hit,
junction, prompt length, encoder input), the states its retention rule remembers
(state_retention.py), and three thresholds that let most scheduler steps skip work in O(1);
``deepest_block_first`` gives a finished request's pages in the evictor's release order without
sorting them.

Invariants: a request's table for type t has ``num_blocks_t(num_tokens)`` entries once allocated
(a state type's table is positional: the columns the engine wrote, most entries None); entries
before ``released[t]`` are None; every non-None entry holds one reference on its page.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from jenga_vllm.core.allocator import PageOwner
from jenga_vllm.core.hits import PrefixHit
from jenga_vllm.core.pages import SmallPage
from jenga_vllm.core.policies import LayerPolicy


@dataclass(slots=True, eq=False)
class RequestPages:
    """One request's page tables and allocation bookkeeping."""

    request_id: str
    tables: list[list[SmallPage | None]]
    released: list[int]  # per type: leading blocks already released (None in the table)
    cached_upto: list[int]  # per type: blocks already offered to the prefix index
    owner: PageOwner
    num_tokens: int = 0
    encoder_key: Hashable | None = None
    encoder_tokens: int = 0
    prompt_tokens: int | None = None  # None: unknown (every released state stays cached)
    junction_tokens: int = 0  # the shared-prefix junction its hit reported (0: none)
    hit_tokens: int = 0  # the prefix hit it was admitted with
    # per state type: (page, hash) of the newest decode-time states kept cached, oldest first,
    # and of the newest prefill-time one the request released (state_retention.py)
    decode_states: dict[int, list[tuple[SmallPage, Hashable]]] = field(default_factory=dict)
    prompt_state: dict[int, tuple[SmallPage, Hashable]] = field(default_factory=dict)
    # per state type with speculative slots: the columns allocated as slots that were never the
    # running column of a step — the engine wrote no boundary state there (a draft's state at
    # most), so they are never offered to the prefix index (cache_blocks)
    unwritten: dict[int, set[int]] = field(default_factory=dict)
    # O(1) fast paths for the common decode step (refresh_thresholds):
    covered_tokens: float = 0  # tokens the current tables can hold without a new page
    next_full: float = 0  # token count at which some type completes a new block to cache
    next_release: float = 0  # computed-token count at which some type releases a page

    @classmethod
    def admitted(
        cls,
        request_id: str,
        num_tokens: int,
        hit: PrefixHit,
        encoder_key: Hashable | None,
        encoder_tokens: int,
        prompt_tokens: int | None,
        junction_tokens: int,
    ) -> RequestPages:
        """A new request's record, its tables starting as the hit's pages (leading Nones: blocks
        the hit's types no longer need, already released)."""
        num_types = len(hit.pages)
        tables = [list(per_type) for per_type in hit.pages]
        released = [0] * num_types
        for t, table in enumerate(tables):
            while released[t] < len(table) and table[released[t]] is None:
                released[t] += 1
        return cls(
            request_id=request_id,
            tables=tables,
            released=released,
            cached_upto=[len(table) for table in tables],
            owner=PageOwner.new(num_types),
            num_tokens=num_tokens,
            encoder_key=encoder_key,
            encoder_tokens=encoder_tokens,
            prompt_tokens=prompt_tokens,
            junction_tokens=junction_tokens,
            hit_tokens=hit.num_tokens,
        )

    def skipped_slots(self, t: int, running: int, checkpoints: tuple[int, ...] = ()) -> list[int]:
        """Columns of state type ``t`` allocated as speculative slots that a step whose running
        column is ``running`` has left behind unwritten (a prefill chunk spanning several
        blocks): their pages hold nothing and move to the step's new columns (vLLM relocates
        its speculative blocks the same way) — except the step's ``checkpoints`` columns, which
        the step writes."""
        unwritten = self.unwritten.get(t)
        if not unwritten:
            return []
        table = self.tables[t]
        return sorted(
            c for c in unwritten if c < running and c not in checkpoints and table[c] is not None
        )

    def refresh_thresholds(self, policies: list[LayerPolicy], prefix_types: list[int]) -> None:
        """Recompute the fast-path thresholds after the tables changed."""
        covered = full = release = float("inf")
        for t in prefix_types:
            policy = policies[t]
            bt = policy.block_tokens
            covered = min(covered, policy.covered_tokens(len(self.tables[t])))
            full = min(full, (self.cached_upto[t] + 1) * bt)
            release = min(release, policy.release_threshold(self.released[t]))
        self.covered_tokens, self.next_full, self.next_release = covered, full, release


def deepest_block_first(
    tables: list[list[SmallPage | None]], released: list[int]
) -> list[SmallPage]:
    """The pages of ``tables`` (one block size, token-position ranks) deepest block first, ties
    in type order: what sorting them by rank, descending and stable, gives. ``released[t]``:
    table t holds nothing below it. Between two consecutive ``released`` marks the same tables
    hold pages; where that is one table (a full-attention table below every window) its slice
    is copied reversed, elsewhere the blocks are walked one by one across the tables."""
    order: list[SmallPage] = []
    top = max(len(table) for table in tables)
    for start in sorted(set(released), reverse=True):
        live = [table for table, r in zip(tables, released, strict=True) if r <= start]
        if len(live) == 1:
            order += [p for p in reversed(live[0][start:top]) if p is not None]
        else:
            for block in range(top - 1, start - 1, -1):
                for table in live:
                    if block < len(table) and (page := table[block]) is not None:
                        order.append(page)
        top = start
    return order
