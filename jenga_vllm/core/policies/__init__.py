"""Layer-type policies. Adding a layer type = one class + one line in POLICY_REGISTRY."""

from __future__ import annotations

from jenga_vllm.core.policies.base import FullAttentionPolicy, LayerPolicy
from jenga_vllm.core.policies.chunked_local import ChunkedLocalPolicy
from jenga_vllm.core.policies.cross_attention import CrossAttentionPolicy
from jenga_vllm.core.policies.mamba import MambaPolicy
from jenga_vllm.core.policies.sliding_window import SlidingWindowPolicy
from jenga_vllm.core.policies.vision_embedding import VisionEmbeddingPolicy

POLICY_REGISTRY: dict[str, type[LayerPolicy]] = {
    "full": FullAttentionPolicy,
    "sliding_window": SlidingWindowPolicy,
    "chunked_local": ChunkedLocalPolicy,
    "mamba": MambaPolicy,
    "cross_attention": CrossAttentionPolicy,
    "vision_embedding": VisionEmbeddingPolicy,
}


def make_policies(plan) -> list[LayerPolicy]:
    """One policy per layer type of a ``LayoutPlan``, in the plan's type order."""
    return [
        POLICY_REGISTRY[t.spec.kind](t.spec, t.block_tokens, plan.block_size) for t in plan.types
    ]


def register_policy(policy: type[LayerPolicy]) -> None:
    """Make a new layer type known to the planner and the cache (the paper's custom_kv_cache)."""
    POLICY_REGISTRY[policy.kind] = policy


__all__ = [
    "POLICY_REGISTRY",
    "ChunkedLocalPolicy",
    "CrossAttentionPolicy",
    "FullAttentionPolicy",
    "LayerPolicy",
    "MambaPolicy",
    "SlidingWindowPolicy",
    "VisionEmbeddingPolicy",
    "make_policies",
    "register_policy",
]
