"""Admission on jenga's pool, vLLM's rules: may this step's allocation go ahead?

vLLM's scheduler asks ``allocate_slots`` and preempts or leaves a request waiting on None; the
checks it makes before allocating are translated here (vLLM 0.32's
``KVCacheManager.allocate_slots``), plus jenga's decode headroom:
- the watermark (``int(watermark × num_blocks)`` blocks vLLM keeps free when a waiting or
  preempted request is admitted beside scheduled ones), counted in jenga's large pages, its null
  page included as vLLM's num_blocks includes its null block: the same bytes on a one-type
  model; applied in both checks, the full sequence's and the step's;
- ``reserved_blocks`` (vLLM's reservation for KV loads in flight) kept free in the step's check
  only, as vLLM keeps it;
- ``full_sequence_must_fit``: the whole prompt, with this engine's in-flight tokens, must fit;
- decode headroom (docs/design.md §5): a waiting or preempted request is admitted only if the
  running batch's next decode step still fits beside it; else it would be that step's
  preemption victim (a preempted request keeps its prefix hit under jenga, so it came straight
  back into the memory its preemption freed). The batch's needs are computed at a step's first
  admission and grow with each request admitted.
"""

from __future__ import annotations

from jenga_vllm.core.cache import JengaCache, PrefixHit


class Admission:
    """The admission checks of one manager's pool."""

    def __init__(self, cache: JengaCache, watermark: float, max_in_flight_tokens: int) -> None:
        plan = cache.plan
        self.cache = cache
        self.watermark_bytes = int(watermark * plan.num_large_pages) * plan.large_page_bytes
        self.unit_bytes = plan.unit_bytes
        self.max_in_flight_tokens = max_in_flight_tokens
        # Pages per type the running batch's next decode step takes, or None until this step's
        # first admission needs it.
        self.headroom_needs: list[int] | None = None

    def fits(
        self,
        request_id: str,
        num_tokens: int,
        hit: PrefixHit | None,
        encoder_tokens: int,
        lookahead: int,
        *,
        admitting: bool,
        full_tokens: int | None,
        reserved_blocks: int,
    ) -> bool:
        """May ``request_id`` grow to ``num_tokens`` this step? ``admitting``: a waiting or
        preempted request joining scheduled ones; ``full_tokens``: its whole sequence must
        fit too (vLLM's ``full_sequence_must_fit``)."""
        cache = self.cache
        watermark = self.watermark_bytes if admitting else 0
        if full_tokens is not None:
            in_flight = self.max_in_flight_tokens
            if not cache.can_allocate(
                request_id, full_tokens, hit, encoder_tokens, in_flight_tokens=in_flight
            ):
                return False
            if watermark and cache.free_bytes() - watermark < cache.bytes_taken(
                request_id, full_tokens, hit, encoder_tokens, in_flight_tokens=in_flight
            ):
                return False
        if admitting:
            if self.headroom_needs is None:
                self.headroom_needs = cache.next_token_needs()
            if not cache.can_allocate(
                request_id,
                num_tokens,
                hit,
                encoder_tokens,
                extra_needs=self.headroom_needs,
                lookahead_tokens=lookahead,
            ):
                return False
        kept_free = watermark + reserved_blocks * self.unit_bytes
        return not kept_free or cache.free_bytes() - kept_free >= cache.bytes_taken(
            request_id, num_tokens, hit, encoder_tokens, lookahead_tokens=lookahead
        )

    def admitted(self, request_id: str) -> None:
        """``request_id`` was admitted: the batch's next decode step takes its pages too."""
        assert self.headroom_needs is not None
        self.cache.add_next_token_needs(self.headroom_needs, request_id)

    def new_step(self) -> None:
        self.headroom_needs = None  # recomputed at this step's first admission
