"""Prefix hits across layer types: the longest prefix every type can serve from cache (Jenga §4.3).

What it owns: ``PrefixHit`` (the hit a new request may start from: a length and each type's pages)
and ``PrefixLookup``, the search ``JengaCache.find_longest_hit`` and ``hit_tokens_by_type`` run.
A lookup reads the prefix index and the policies and changes nothing — not even an LRU stamp: a
hit's pages are touched only when ``JengaCache.allocate`` takes it.

The policy in plain words: each type answers "the longest valid hit ≤ L" (its policy's
``longest_valid_hit`` over its own entries in the prefix index: a full-attention type needs every
block from token 0, a sliding window only the blocks of its last window, a state type one state
at L). Asking the types in turn until none shrinks L gives the longest length valid for all
(vLLM's fixed point). On a model with state types the lookup also reports the *junction*: the
longest length the attention types alone could serve, when the full hit is shorter — a shared
prefix whose end has no cached state yet (docs/design.md §2, §5).

Lengths are counted in common blocks (the plan's block size, the prefix hash granule) until the
hit is built; ``PrefixHit.num_tokens`` is in tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from jenga_vllm.core.pages import SmallPage
from jenga_vllm.core.policies import LayerPolicy
from jenga_vllm.core.prefix import PrefixIndex


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """A prefix-cache hit valid for every layer type: ``num_tokens`` and each type's pages.

    ``junction_tokens``: on a model with state types, the longest prefix the attention types
    alone could serve when it is longer than ``num_tokens`` (else 0) — a shared prefix whose end
    has no cached state yet; an engine that stops a prefill chunk there writes that state.
    """

    num_tokens: int
    pages: tuple[tuple[SmallPage | None, ...], ...]
    junction_tokens: int = 0

    @property
    def num_pages(self) -> int:
        return sum(1 for per_type in self.pages for p in per_type if p is not None)

    def reused_pages(self) -> list[SmallPage]:
        """Every page of the hit, all types: what a request starting from it takes a share of."""
        return [p for per_type in self.pages for p in per_type if p is not None]


NO_HIT_CACHE: dict[int, PrefixHit] = {}


def empty_hit(num_types: int) -> PrefixHit:
    hit = NO_HIT_CACHE.get(num_types)
    if hit is None:
        hit = NO_HIT_CACHE[num_types] = PrefixHit(0, ((),) * num_types)
    return hit


class PrefixLookup:
    """The cross-type hit search over one cache's prefix index and policies."""

    def __init__(
        self,
        policies: list[LayerPolicy],
        index: PrefixIndex,
        prefix_types: list[int],
        state_types: list[int],
        block_size: int,
    ) -> None:
        self.policies = policies
        self.index = index
        self.prefix_types = prefix_types  # types keyed by the token prefix
        self.state_types = state_types
        self.attention_types = [t for t in prefix_types if t not in state_types]
        # Types whose hit is an unbroken cached run from token 0 (full attention): found by a
        # forward scan, they bound every other type's hit (hit_tokens_by_type).
        self.whole_prefix_types = [t for t in prefix_types if policies[t].needs_whole_prefix]
        self.block_size = block_size

    def longest_hit(self, hashes: Sequence[Hashable], max_tokens: int) -> PrefixHit:
        """Longest prefix (≤ max_tokens) every layer type can serve from cache."""
        num_types = len(self.policies)
        longest = min(len(hashes), max_tokens // self.block_size)
        if longest <= 0:
            return empty_hit(num_types)
        lookups = [self._cached_lookup(t, hashes) for t in range(num_types)]
        length = self._fixed_point(self.prefix_types, longest, lookups)
        junction = 0
        if self.state_types and length < longest:
            attention = self._fixed_point(self.attention_types, longest, lookups)
            if attention > length:
                junction = attention * self.block_size
        if length <= 0:
            return PrefixHit(0, ((),) * num_types, junction) if junction else empty_hit(num_types)
        pages = []
        for t, policy in enumerate(self.policies):
            if t not in self.prefix_types:
                pages.append(())
                continue
            n = length // policy.hash_ratio
            first = policy.first_needed_block(n * policy.block_tokens)
            pages.append(
                (None,) * first
                + tuple(self.index.get(t, hashes[policy.hash_index(i)]) for i in range(first, n))
            )
        return PrefixHit(length * self.block_size, tuple(pages), junction)

    def tokens_by_type(self, hashes: Sequence[Hashable], max_tokens: int) -> list[int]:
        """The longest prefix each layer type alone could serve (0 for types not keyed by
        tokens), every type's capped at the whole-prefix types' (see JengaCache)."""
        longest = min(len(hashes), max_tokens // self.block_size)
        hits = [0] * len(self.policies)
        if longest <= 0:
            return hits
        whole = self.whole_prefix_types
        for t in whole:  # a forward scan that stops at the first miss
            hits[t] = self.policies[t].longest_valid_hit(longest, self._cached_lookup(t, hashes))
        bound = min((hits[t] for t in whole), default=longest)
        for t in self.prefix_types:
            if t not in whole:
                lookup = self._cached_lookup(t, hashes)
                hits[t] = self.policies[t].longest_valid_hit(bound, lookup)
        return [h * self.block_size for h in hits]

    def _fixed_point(self, types: list[int], length: int, lookups: list) -> int:
        """Longest length (in common blocks, ≤ length) every type in ``types`` accepts."""
        stable = False
        while not stable and length > 0:
            stable = True
            for t in types:
                found = self.policies[t].longest_valid_hit(length, lookups[t])
                if found < length:
                    length, stable = found, False
        return max(length, 0)

    def _cached_lookup(self, type_idx: int, hashes: Sequence[Hashable]) -> Callable[[int], bool]:
        policy = self.policies[type_idx]
        entries = self.index.by_type[type_idx]

        def is_cached(block: int) -> bool:
            return hashes[policy.hash_index(block)] in entries

        return is_cached
