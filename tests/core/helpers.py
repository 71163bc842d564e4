"""Small builders shared by the core tests."""

from __future__ import annotations

from jenga_vllm.core import JengaCache, LayerTypeSpec, plan_layout

BS = 16


def three_type_specs(window: int = 40, mamba_interval: int = 32) -> list[LayerTypeSpec]:
    """Full (2 layers × 64 B/token), sliding window (3 × 48 B/token), Mamba (2 × 1024 B state)."""
    return [
        LayerTypeSpec.uniform("full", "full", 2, 64),
        LayerTypeSpec.uniform("swa", "sliding_window", 3, 48, window=window),
        LayerTypeSpec.uniform("mamba", "mamba", 2, 1024, block_tokens=mamba_interval),
    ]


def make_cache(specs, large_pages: int, evictor: str = "prefix_subset", **kw) -> JengaCache:
    geometry = plan_layout(specs, BS)
    plan = plan_layout(specs, BS, geometry.large_page_bytes * large_pages, **kw)
    return JengaCache(plan, evictor=evictor)
