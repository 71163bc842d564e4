"""Cross-attention / encoder input: pages hold KV of an encoder input item (audio, image).

The pages are allocated once per request for the item's encoder tokens and never grow in decode.
They are keyed by the item's hash, so requests with the same input share them. A token-prefix hit
does not constrain this type (any length is valid); whole items are kept or evicted together, since
all pages of one item share one random eviction rank.
"""

from __future__ import annotations

from collections.abc import Callable

from jenga_vllm.core.policies.base import LayerPolicy


class CrossAttentionPolicy(LayerPolicy):
    kind = "cross_attention"
    uses_token_prefix = False
    needs_whole_prefix = False  # any hit length is valid: the pages are not the token prefix

    def first_needed_block(self, num_computed_tokens: int) -> int:
        return 0

    def live_tokens(self, num_tokens: int) -> int:
        return 0  # the encoder input's tokens, not the decoder's

    def longest_valid_hit(self, max_blocks: int, is_cached: Callable[[int], bool]) -> int:
        return max_blocks
