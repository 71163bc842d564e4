"""The exact bytes running requests need, and the oracle peer that admits on them alone.

``ExactNeed``: per attention layer type, a block that lies wholly inside a request's live range
is counted once across the running requests that share it (same prefix hash), as a
prefix-sharing oracle would hold it; live tokens outside whole blocks and Mamba states are
counted per request. Live ranges come from the layer types' own policies (``live_tokens``).
"""

from __future__ import annotations

from benchmarks.sim.config import BLOCK_SIZE
from benchmarks.sim.managers import Manager, Running
from jenga_vllm.core.prefix import block_hashes
from jenga_vllm.tools.model_shapes import ModelShapes


class ExactNeed:
    """Bytes the running requests need exactly. Per attention layer type, a 16-token block that
    lies wholly inside a request's live range (all tokens for full attention, the window for
    sliding window, the current chunk for chunked local) is counted once across the running
    requests that share it (same prefix hash), as a prefix-sharing oracle would hold it; live
    tokens outside whole blocks and Mamba states are counted per request.
    """

    def __init__(self, shapes: ModelShapes, block_size: int = BLOCK_SIZE) -> None:
        self.shapes = shapes
        self.block_size = block_size
        state, terms = shapes.need_terms
        self.state_bytes = state
        self.terms = terms  # (policy, bytes per token) per attention layer type
        self.refs: dict[tuple[int, int], int] = {}
        self.shared_total = 0
        self.hashes: dict[str, list[int]] = {}
        self.ranges: dict[str, list[tuple[int, int]]] = {}  # per type: counted blocks [lo, hi)
        self.private: dict[str, int] = {}
        self.private_total = 0
        self.lengths: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self.private_total + self.shared_total

    def _layout(self, length: int) -> tuple[list[tuple[int, int]], int]:
        """Whole live blocks per type and the private bytes, for a request of ``length``."""
        ranges = []
        private = self.state_bytes
        for policy, per_token in self.terms:
            live = policy.live_tokens(length)
            start = length - live
            lo = -(-start // self.block_size)
            hi = length // self.block_size
            if hi < lo:
                hi = lo
            ranges.append((lo, hi))
            private += (live - (hi - lo) * self.block_size) * per_token
        return ranges, private

    def cost_of(self, req: Running, length: int) -> int:
        """How much ``total`` grows if ``req`` holds ``length`` tokens (nothing changes)."""
        hashes = _extend_hashes(req.tokens, self.hashes.get(req.rid, []), length, self.block_size)
        ranges, private = self._layout(length)
        old = self.ranges.get(req.rid)
        delta = private - self.private.get(req.rid, 0)
        for t, (lo, hi) in enumerate(ranges):
            per_block = self.terms[t][1] * self.block_size
            old_lo, old_hi = old[t] if old else (0, 0)
            for i in _outside(lo, hi, old_lo, old_hi):
                if (t, hashes[i]) not in self.refs:
                    delta += per_block
            for i in _outside(old_lo, old_hi, lo, hi):
                if self.refs[(t, hashes[i])] == 1:
                    delta -= per_block
        return delta

    def set(self, req: Running, length: int) -> None:
        if self.lengths.get(req.rid) == length:
            return
        self.lengths[req.rid] = length
        hashes = self.hashes[req.rid] = _extend_hashes(
            req.tokens, self.hashes.get(req.rid, []), length, self.block_size
        )
        ranges, private = self._layout(length)
        old = self.ranges.get(req.rid)
        for t, (lo, hi) in enumerate(ranges):
            old_lo, old_hi = old[t] if old else (0, 0)
            for i in _outside(lo, hi, old_lo, old_hi):
                self._ref(t, hashes[i], +1)
            for i in _outside(old_lo, old_hi, lo, hi):
                self._ref(t, hashes[i], -1)
        self.ranges[req.rid] = ranges
        self.private_total += private - self.private.get(req.rid, 0)
        self.private[req.rid] = private

    def _ref(self, t: int, key: int, change: int) -> None:
        count = self.refs.get((t, key), 0) + change
        if count == 0:
            del self.refs[(t, key)]
            self.shared_total -= self.terms[t][1] * self.block_size
        else:
            if count == 1 and change > 0:
                self.shared_total += self.terms[t][1] * self.block_size
            self.refs[(t, key)] = count

    def remove(self, req: Running) -> None:
        hashes = self.hashes.pop(req.rid, [])
        for t, (lo, hi) in enumerate(self.ranges.pop(req.rid, [])):
            for i in range(lo, hi):
                self._ref(t, hashes[i], -1)
        self.private_total -= self.private.pop(req.rid, 0)
        self.lengths.pop(req.rid, None)


def _outside(lo: int, hi: int, other_lo: int, other_hi: int):
    """Indices of [lo, hi) that are not in [other_lo, other_hi)."""
    yield from range(lo, min(hi, other_lo))
    yield from range(max(lo, other_hi), hi)


def _extend_hashes(tokens: list[int], have: list[int], length: int, bs: int) -> list[int]:
    full = length // bs
    if full <= len(have):
        return have
    start = len(have) * bs
    extra = {"parent": have[-1]} if have else {}
    return have + block_hashes(tokens[start : full * bs], bs, **extra)


class OracleManager(Manager):
    """Admits while the exact bytes every running request needs fit in the budget (ExactNeed:
    shared prefixes of running requests once, no pages, no cache of finished requests)."""

    name = "oracle"

    def __init__(self, shapes: ModelShapes, pool_bytes: int) -> None:
        self.need = ExactNeed(shapes)
        self._pool = pool_bytes

    @property
    def pool_bytes(self) -> int:
        return self._pool

    def _set(self, req: Running, length: int) -> bool:
        if self.need.total + self.need.cost_of(req, length) > self._pool:
            return False
        self.need.set(req, length)
        req.length = length
        return True

    def admit(self, req: Running) -> int | None:
        return 0 if self._set(req, req.prompt_len) else None

    def extend(self, req: Running, new_len: int) -> bool:
        return self._set(req, new_len)

    def finish(self, req: Running) -> None:
        self.need.remove(req)

    def held_bytes(self) -> int:
        return self.need.total
