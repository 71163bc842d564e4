"""The views jenga's workers give NIXL for a multi-type pool (vllm/nixl_regions.py), on a real
layout plan and a real backing buffer: each is the model's view (same bytes, shape, strides) on a
storage that is exactly the layer's region, the shape vLLM's NIXL worker registers as a strided
region (base = pool + offset, length = page, stride = unit)."""

from __future__ import annotations

import pytest
import torch

from jenga_vllm.core.layout import plan_layout
from jenga_vllm.core.spec import LayerTypeSpec
from jenga_vllm.vllm.nixl_regions import layout_key, transfer_views

PAGE = 16 * 2 * 2 * 32 * 4  # 16 tokens of K and V, 2 heads of 32, fp32


def gemma3_like(block: int = 16):
    """Four sliding-window layers and two full ones, the zoo Gemma-3's shapes: the window's
    small page spans two units, so its layers' views need slack past the pool."""
    full = LayerTypeSpec.of("full", (PAGE // 16,) * 2, layer_names=("l2", "l5"))
    window = LayerTypeSpec.of(
        "sliding_window", (PAGE // 16,) * 4, window=64, layer_names=("l0", "l1", "l3", "l4")
    )
    return plan_layout([full, window], block, 1 << 20)


def model_views(plan, slack: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A backing buffer and per-layer views laid out as kv_config's placements lay them."""
    buf = torch.arange(plan.pool_bytes + slack, dtype=torch.int64).to(torch.int8)
    views = {}
    for layout in plan.types:
        for name, offset in zip(layout.spec.layer_names, layout.layer_offsets, strict=True):
            views[name] = torch.empty(0, dtype=torch.float32).set_(
                buf.untyped_storage(),
                offset // 4,
                (plan.num_units, 2, 16, 64),
                (plan.unit_bytes // 4, 16 * 64, 64, 1),
            )
    return buf, views


def test_each_layer_is_exactly_its_unit_strided_region():
    plan = gemma3_like()
    largest = max(t.small_page_bytes for t in plan.types)
    assert largest == 2 * plan.unit_bytes  # the case NIXL's block-major check rejected
    _, views = model_views(plan, slack=largest)
    region = plan.num_units * plan.unit_bytes
    for name, view in transfer_views(views, plan).items():
        model = views[name]
        assert view.data_ptr() == model.data_ptr()
        assert view.shape == model.shape and view.stride() == model.stride()
        storage = view.untyped_storage()
        assert storage.data_ptr() == model.data_ptr() and storage.nbytes() == region
        # NIXL's condition for a strided region: 0 <= storage - blocks * stride < stride
        stride = view.stride(0) * view.element_size()
        assert 0 <= storage.nbytes() - plan.num_units * stride < stride
        assert view[0].nbytes == PAGE
        assert torch.equal(view[-1].view(torch.int32), model[-1].view(torch.int32))  # same bytes
        view[3].fill_(7.0)
        assert bool((model[3] == 7.0).all())


def test_an_allocation_without_the_transfer_slack_is_an_error_not_a_short_region():
    plan = gemma3_like()
    largest = max(t.small_page_bytes for t in plan.types)
    _, views = model_views(plan, slack=largest - plan.unit_bytes)  # the slack without NIXL
    with pytest.raises(RuntimeError, match="transfer slack"):
        transfer_views(views, plan)


def test_the_handshake_key_names_the_layout_not_the_pool_size():
    assert layout_key(gemma3_like(), 16) == layout_key(
        plan_layout([t.spec for t in gemma3_like().types], 16, 1 << 21), 16
    )
    assert layout_key(gemma3_like(), 16) != layout_key(gemma3_like(32), 32)
