"""Vision embedding: pages hold the encoder output of one image (or other multimodal item).

The paper's vision-embedding cache as a layer type of the pool (docs/design.md §5): a small page
holds ``block_tokens`` embeddings of the projector's output (hidden size × dtype bytes each),
allocated from the same large pages as KV. Pages belong to an *item* (``JengaCache.hold_item``),
not to a request: they are keyed ``(item hash, page index)`` so a later request with the same
image reuses them without running the encoder, and when no request needs the item any more they
stay cached under the same evictor as KV. All pages of an item share one random eviction rank,
so an item is evicted whole (suffix-first order would be meaningless inside one image).
"""

from __future__ import annotations

from jenga_vllm.core.policies.cross_attention import CrossAttentionPolicy


class VisionEmbeddingPolicy(CrossAttentionPolicy):
    kind = "vision_embedding"
    holds_items = True  # pages belong to item-cache entries, never to a request's tables
