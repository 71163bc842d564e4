"""The Jenga core: engine-agnostic, pure Python. Never imports vllm or torch."""

from jenga_vllm.core.accounting import PoolUsage, pool_usage
from jenga_vllm.core.allocator import TwoLevelAllocator
from jenga_vllm.core.cache import JengaCache, PrefixHit
from jenga_vllm.core.errors import (
    JengaAllocationError,
    JengaConfigError,
    JengaError,
    JengaUnsupportedError,
)
from jenga_vllm.core.evictor import EVICTORS, PerTypeLRUEvictor, PrefixSubsetEvictor
from jenga_vllm.core.invariants import check_invariants
from jenga_vllm.core.layout import LayoutPlan, TypeLayout, plan_layout
from jenga_vllm.core.policies import POLICY_REGISTRY, LayerPolicy, register_policy
from jenga_vllm.core.prefix import block_hashes
from jenga_vllm.core.spec import LayerTypeSpec

__all__ = [
    "EVICTORS",
    "POLICY_REGISTRY",
    "JengaAllocationError",
    "JengaCache",
    "JengaConfigError",
    "JengaError",
    "JengaUnsupportedError",
    "LayerPolicy",
    "LayerTypeSpec",
    "LayoutPlan",
    "PerTypeLRUEvictor",
    "PoolUsage",
    "PrefixHit",
    "PrefixSubsetEvictor",
    "TwoLevelAllocator",
    "TypeLayout",
    "block_hashes",
    "check_invariants",
    "plan_layout",
    "pool_usage",
    "register_policy",
]
