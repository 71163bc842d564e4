"""vLLM boundary, worker side: jenga's pool as vLLM's NixlConnector registers it.

What it owns
    ``transfer_views``: the per-layer views the NIXL worker registers when the pool is jenga's
    own interleaved layout (more than one layer type: docs/design.md §5). vLLM's worker
    describes a layer as a region of blocks: block ``b`` at ``base + b·stride``, ``len`` bytes,
    and it accepts a strided region (stride > len) only when the storage behind the view is
    the region exactly: ``0 <= storage bytes - num_blocks·stride < stride``. Jenga's layer of
    type T has its page of unit id ``u`` at ``pool + offset_of_layer + u·unit_bytes`` (a small
    page may span several units, so the pool carries slack for the views of the last ids). So
    each layer's transfer view keeps the model's shape and strides but sits on a slice of the
    pool's storage that starts at the layer's offset and spans ``num_units·unit_bytes``: the
    same bytes, a region vLLM reads as (base = pool + offset, len = page, stride = unit). The
    allocation carries one more unit of slack when a KV connector is configured
    (``kv_config.view_slack``) so every such slice fits.

    Layers of two types at the same offset give the same base: vLLM merges them into one
    region it reads for both groups' block ids, which is right, because a unit belongs to one
    type at a time and the bytes at that offset are whichever type's page the unit holds. Their
    page lengths must then agree, checked here.

    ``layout_key``: what must match between a prefill and a decode engine for unit ids to mean
    the same bytes (unit and large-page bytes, the block size, each type's kind, small page and
    layer offsets; not the pool's size). It joins vLLM's NIXL compatibility hash, so a jenga
    engine paired with a stock engine or a jenga engine of another layout stops at the
    handshake with vLLM's "NIXL compatibility hash mismatch" error, never moving bytes.

Invariants: the views alias the model's KV bytes (no copy); they are used only to register
memory and compute descriptors.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from jenga_vllm.core.layout import LayoutPlan


def transfer_views(kv_caches: dict[str, Any], plan: LayoutPlan) -> dict[str, torch.Tensor]:
    """The model's per-layer KV views, each re-based on a storage slice that is exactly its
    NIXL region (see the module docstring)."""
    region_bytes = plan.num_units * plan.unit_bytes
    page_at: dict[int, int] = {}
    views = {}
    for name, view in kv_caches.items():
        if not isinstance(view, torch.Tensor):
            raise TypeError(f"layer {name}: a state layer's views cannot be registered yet")
        storage = view.untyped_storage()
        offset = view.data_ptr() - storage.data_ptr()
        if offset + region_bytes > storage.nbytes():
            raise RuntimeError(
                f"layer {name}: the KV allocation lacks the transfer slack "
                f"({offset + region_bytes:,} > {storage.nbytes():,} bytes)"
            )
        page = view[0].nbytes
        if page_at.setdefault(offset, page) != page:
            raise RuntimeError(
                f"layer {name}: two layer types at offset {offset} have pages of "
                f"{page_at[offset]} and {page} bytes; NIXL would read one length for both"
            )
        sliced = storage[offset : offset + region_bytes]
        views[name] = torch.empty(0, dtype=view.dtype, device=view.device).set_(
            sliced, 0, view.shape, view.stride()
        )
    return views


def layout_key(plan: LayoutPlan, block_size: int) -> str:
    """A digest of what makes a unit id mean the same bytes on two engines."""
    parts = [f"jenga unit={plan.unit_bytes} large={plan.large_page_bytes} block={block_size}"]
    for t in plan.types:
        parts.append(
            f"{t.spec.kind}:{t.spec.name}:{t.small_page_bytes}:"
            + ",".join(map(str, t.layer_offsets))
            + ":"
            + ",".join(t.spec.layer_names)
        )
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def seal_handshake(worker: Any, plan: LayoutPlan) -> None:
    """Fold jenga's layout into a registered NIXL worker's compatibility hash and the
    handshake payload it serves (a dataclass: compatibility_hash, agent_metadata_bytes)."""
    from dataclasses import replace

    key = layout_key(plan, worker.block_size)
    worker.compat_hash = hashlib.sha256(f"{worker.compat_hash}|{key}".encode()).hexdigest()
    worker.xfer_handshake_metadata = replace(
        worker.xfer_handshake_metadata, compatibility_hash=worker.compat_hash
    )
