"""Hypothesis stateful test: random interleavings of admit / extend / prefix-hit / free / preempt /
evict / reset across five layer types with different small-page sizes.

After every step: check_invariants (every unit free/used/cached exactly once, ref counts, queues,
accounting), plus two checks against a naive model kept beside the cache:
- shadow memory: every page remembers which tokens' KV was "written" into it; a prefix hit must
  only ever return pages holding exactly the hit's tokens (catches use-after-evict / aliasing);
- geometry: the byte ranges of all live small pages are pairwise disjoint, and each request's
  table has non-null entries exactly where its layer type still needs tokens.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from jenga_vllm.core import (
    JengaCache,
    LayerTypeSpec,
    block_hashes,
    check_invariants,
    plan_layout,
    pool_usage,
)
from jenga_vllm.core.accounting import snapshot

BS = 16
WINDOW = 40
CHUNK = 64
INTERVAL = 32
SPECS = [  # small pages 2048 / 1536 / 1024 / 3072 / 512 B -> large page 6144 B, no padding
    LayerTypeSpec.uniform("full", "full", 2, 64),
    LayerTypeSpec.uniform("swa", "sliding_window", 3, 32, window=WINDOW),
    LayerTypeSpec.uniform("chunked", "chunked_local", 1, 64, chunk=CHUNK),
    LayerTypeSpec.uniform("mamba", "mamba", 2, 1536, block_tokens=INTERVAL),
    LayerTypeSpec.uniform("cross", "cross_attention", 1, 32),
]
# The same five types with a Mamba state as large as a large page: one small page per large page
# (the allocator's whole-page fast path), mixed with types that share large pages.
SPECS_WHOLE_PAGE = [
    *SPECS[:3],
    LayerTypeSpec.uniform("mamba", "mamba", 2, 3072, block_tokens=INTERVAL),
    SPECS[4],
]
PREFIXES = [[1000 + i for i in range(n)] for n in (0, 37, 64, 100)]
EXAMPLES = int(os.environ.get("JENGA_STATEFUL_EXAMPLES", "200"))


def expected_live_blocks(kind: str, computed: int, total: int, hit_first: int) -> set[int] | None:
    """Blocks a naive implementation keeps for a running request (None = not checked)."""
    nblocks = -(-total // BS)
    if kind == "full":
        return set(range(nblocks))
    if kind == "sliding_window":
        return set(range(max(0, computed - WINDOW + 1) // BS, nblocks))
    if kind == "chunked_local":
        return set(range(computed // CHUNK * CHUNK // BS, nblocks))
    return None


class JengaMachine(RuleBasedStateMachine):
    requests = Bundle("requests")
    specs = SPECS

    def __init__(self) -> None:
        super().__init__()
        geometry = plan_layout(self.specs, BS)
        self.plan = plan_layout(self.specs, BS, geometry.large_page_bytes * 13)
        self.cache = JengaCache(self.plan)
        self.tokens: dict[str, list[int]] = {}
        self.computed: dict[str, int] = {}
        self.encoder: dict[str, int] = {}
        self.shadow: dict[int, object] = {}  # unit id -> what was written there
        self.admitted: set[str] = set()
        self.counter = 0
        self.hits = 0

    # -- helpers ---------------------------------------------------------------------------
    def _content(self, t: int, rid: str, block: int, upto: int) -> object:
        """What the KV/state of ``block`` holds once ``upto`` tokens are computed."""
        policy = self.cache.policies[t]
        tokens = self.tokens[rid]
        if not policy.uses_token_prefix:
            return ("encoder", self.encoder[rid], block)
        end = (block + 1) * policy.block_tokens
        if end <= upto:
            return ("tokens", tuple(tokens[:end]))
        return ("partial", rid, tuple(tokens[:upto]))

    def _compute(self, rid: str, upto: int) -> None:
        """Model the engine: write KV of every live block touched by tokens [computed, upto)."""
        start = self.computed[rid]
        for t, table in enumerate(self.cache.requests[rid].tables):
            policy = self.cache.policies[t]
            if policy.uses_token_prefix:
                first = start // policy.block_tokens
                blocks = range(first, min(len(table), -(-upto // policy.block_tokens)))
            else:  # encoder KV is written once, when the request is admitted
                blocks = range(len(table)) if rid not in self.admitted else range(0)
            for block in blocks:
                page = table[block]
                if page is not None:
                    self.shadow[page.unit_id] = self._content(t, rid, block, upto)
        self.computed[rid] = upto
        self.admitted.add(rid)
        self.cache.cache_blocks(rid, block_hashes(self.tokens[rid], BS), upto)
        self.cache.release_unneeded(rid, upto)

    # -- rules -------------------------------------------------------------------------------
    @rule(
        target=requests,
        prefix=st.sampled_from(range(len(PREFIXES))),
        tail=st.lists(st.integers(0, 3), min_size=1, max_size=70),
        encoder=st.sampled_from([0, 1, 2]),
    )
    def admit(self, prefix, tail, encoder):
        self.counter += 1
        rid = f"r{self.counter}"
        tokens = PREFIXES[prefix] + tail
        self.tokens[rid] = tokens
        self.encoder[rid] = encoder
        hashes = block_hashes(tokens, BS)
        hit = self.cache.find_longest_hit(hashes, len(tokens) - 1)
        assert hit.num_tokens < len(tokens) and hit.num_tokens % BS == 0
        for t, pages in enumerate(hit.pages):
            for block, page in enumerate(pages):
                if page is not None:
                    assert self.shadow.get(page.unit_id) == (
                        "tokens",
                        tuple(tokens[: (block + 1) * self.cache.policies[t].block_tokens]),
                    ), "hit returned a page with other tokens' KV"
        got = self.cache.allocate(
            rid, len(tokens), hit, encoder_key=f"item{encoder}", encoder_tokens=40 + 10 * encoder
        )
        if got is None:
            return None  # not admitted: nothing may have changed (invariants check it)
        fresh = {page.unit_id for page in got[4]}
        for block, page in enumerate(self.cache.requests[rid].tables[4]):
            if page.unit_id not in fresh:  # shared with an earlier request of the same input
                assert self.shadow.get(page.unit_id) == ("encoder", encoder, block)
        self.hits += hit.num_tokens > 0
        self.computed[rid] = hit.num_tokens
        self._compute(rid, len(tokens))
        return rid

    @rule(rid=requests, n=st.integers(1, 40))
    def extend(self, rid, n):
        if rid not in self.cache.requests:
            return
        new_tokens = [7] * n
        total = len(self.tokens[rid]) + n
        if self.cache.allocate(rid, total) is None:
            return
        self.tokens[rid] = self.tokens[rid] + new_tokens
        self._compute(rid, total)

    @rule(rid=consumes(requests))
    def finish(self, rid):
        if rid in self.cache.requests:
            self.cache.free(rid)

    @rule(rid=requests)
    def preempt_and_resume(self, rid):
        """Preemption: free everything, later re-admit with a prefix hit on its own tokens."""
        if rid not in self.cache.requests:
            return
        self.cache.free(rid)
        self.admitted.discard(rid)
        tokens = self.tokens[rid]
        hit = self.cache.find_longest_hit(block_hashes(tokens, BS), len(tokens) - 1)
        got = self.cache.allocate(
            rid,
            len(tokens),
            hit,
            encoder_key=f"item{self.encoder[rid]}",
            encoder_tokens=40 + 10 * self.encoder[rid],
        )
        if got is not None:
            self.computed[rid] = hit.num_tokens
            self._compute(rid, len(tokens))

    @rule()
    def evict(self):
        self.cache.evict_one()

    @rule()
    def reset(self):
        if self.cache.reset_prefix_cache():
            assert len(self.cache.allocator.free_large) == self.plan.usable_large_pages

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def pool_is_consistent(self):
        check_invariants(self.cache)

    @invariant()
    def metrics_snapshot_equals_a_census(self):
        """The O(types) snapshot metrics export equals the O(pool) census, and adds up."""
        snap, usage = snapshot(self.cache), pool_usage(self.cache)
        for tu, figures in zip(usage.types, snap["types"].values(), strict=True):
            assert (figures["used_bytes"], figures["cached_bytes"], figures["free_bytes"]) == (
                tu.used_bytes,
                tu.cached_bytes,
                tu.empty_bytes,
            )
            assert (figures["padding_bytes"], figures["partial_bytes"]) == (
                tu.padding_bytes,
                tu.partial_bytes,
            )
            assert figures["stranded_bytes"] == tu.stranded_bytes
        held = sum(
            f["used_bytes"] + f["cached_bytes"] + f["free_bytes"] for f in snap["types"].values()
        )
        free = snap["large_pages_free"] * snap["large_page_bytes"] + snap["null_bytes"]
        assert held + free == snap["pool_bytes"]

    @invariant()
    def live_pages_never_overlap(self):
        spans = []
        for large in self.cache.allocator.large_pages[1:]:
            if large.num_used or large.num_cached:
                size = self.plan.types[large.type_idx].small_page_bytes
                for page in large.pages:
                    if not page.is_empty:
                        start = page.unit_id * self.plan.unit_bytes
                        spans.append((start, start + size))
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), (
            "live small pages overlap"
        )

    @invariant()
    def tables_hold_what_each_type_needs(self):
        for rid, req in self.cache.requests.items():
            computed, total = self.computed[rid], len(self.tokens[rid])
            for t, table in enumerate(req.tables):
                kind = self.specs[t].kind
                live = {b for b, p in enumerate(table) if p is not None}
                expected = expected_live_blocks(kind, computed, total, 0)
                if expected is not None:
                    assert live == expected, (
                        f"{rid} {kind}: live {sorted(live)} != {sorted(expected)}"
                    )
                elif kind == "mamba":
                    newest = -(-total // INTERVAL) - 1
                    assert newest in live and len(live) <= 2


TestJengaStateful = JengaMachine.TestCase
TestJengaStateful.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class WholePageMachine(JengaMachine):
    specs = SPECS_WHOLE_PAGE


TestJengaStatefulWholePages = WholePageMachine.TestCase
TestJengaStatefulWholePages.settings = TestJengaStateful.settings
