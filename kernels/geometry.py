"""Page geometry of one attention layer inside jenga's shared KV pool (docs/design.md §3).

The whole KV cache is ONE int8 buffer cut into *large pages*; each large page is carved into the
*small pages* of one *layer type*. Ids are *unit* indices: a unit is ``u`` bytes (the gcd of all
small-page sizes, a multiple of 16), and the type-t small page at large page ``k``, slot ``j`` has
id ``k·(LCM/u) + j·(S_t/u)``. Unit id 0 (large page 0) is the null page: released or padding
entries of a page table point there and kernels must never read it. vLLM calls a small page's
unit id a *block id*; that is the only place its word "block" appears here.

Inside a small page the layers of the type follow each other; layer ``l`` starts at byte
``offset_l``. Each layer sees the pool exactly as vLLM 0.32's ``create_kv_cache_views`` builds it:

    view  shape   [num_units, H, N, C]        H = kv heads, N = block_size tokens,
          strides (u/e, N·C, C, 1) elements  C = 2·head_size (K then V), e = element bytes
          offset  offset_l / e

So the page of unit id ``b`` starts at byte ``offset_l + b·u``. Consecutive ids overlap (``u`` is
smaller than a page); that is legal because a layer's page table only holds ids of its own type's
small pages, which never overlap each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ALIGN_BYTES = 16


@dataclass(frozen=True, slots=True)
class LayerPageGeometry:
    """Where one attention layer's small pages live in the int8 pool.

    ``unit_bytes`` is the id granule ``u``; ``offset_bytes`` is this layer's byte offset inside its
    type's small page. A layer's page holds ``num_kv_heads × block_size`` rows of ``2·head_size``
    elements (K then V of one token and head).
    """

    num_kv_heads: int
    head_size: int
    block_size: int
    dtype: torch.dtype
    unit_bytes: int
    offset_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("num_kv_heads", "head_size", "block_size", "unit_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.offset_bytes < 0:
            raise ValueError(f"offset_bytes must be >= 0, got {self.offset_bytes}")
        if self.unit_bytes % ALIGN_BYTES or self.offset_bytes % ALIGN_BYTES:
            raise ValueError(
                f"unit_bytes ({self.unit_bytes}) and offset_bytes ({self.offset_bytes}) must be "
                f"multiples of {ALIGN_BYTES} bytes so page starts stay aligned for vector loads; "
                "round the small pages up to a 16-byte granule in the layout planner"
            )

    @property
    def element_bytes(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def row_elements(self) -> int:
        """C: elements of one (token, head) row, K then V."""
        return 2 * self.head_size

    @property
    def page_bytes(self) -> int:
        """Bytes of this layer's part of one small page."""
        return self.num_kv_heads * self.block_size * self.row_elements * self.element_bytes

    def num_units(self, pool_bytes: int) -> int:
        """Largest view length whose last page still fits inside a pool of ``pool_bytes``."""
        room = pool_bytes - self.offset_bytes - self.page_bytes
        if room < 0:
            raise ValueError(
                f"pool of {pool_bytes} bytes cannot hold one {self.page_bytes}-byte page at "
                f"offset {self.offset_bytes}"
            )
        return room // self.unit_bytes + 1

    def kv_view(self, pool: torch.Tensor, num_units: int | None = None) -> torch.Tensor:
        """This layer's ``[num_units, H, N, C]`` view of the int8 ``pool``, built like vLLM does.

        Mirrors ``vllm.v1.kv_cache_interface.create_kv_cache_views`` for an LBHNC layout with
        ``block_stride = unit_bytes``: an int8 ``as_strided`` view with byte strides, then
        ``.view(dtype)``.
        """
        if pool.dtype != torch.int8 or pool.dim() != 1:
            raise ValueError(
                f"pool must be a 1-D int8 tensor, got {pool.dtype} {tuple(pool.shape)}"
            )
        if num_units is None:
            num_units = self.num_units(pool.numel())
        row_bytes = self.row_elements * self.element_bytes
        view = torch.as_strided(
            pool,
            size=(num_units, self.num_kv_heads, self.block_size, row_bytes),
            stride=(self.unit_bytes, self.block_size * row_bytes, row_bytes, 1),
            storage_offset=pool.storage_offset() + self.offset_bytes,
        )
        return view.view(self.dtype)


def unit_and_large_page_bytes(small_page_bytes: list[int]) -> tuple[int, int]:
    """``(u, LCM)``: the unit (gcd of small pages) and the large page (their lcm)."""
    unit = math.gcd(*small_page_bytes)
    large = math.lcm(*small_page_bytes)
    return unit, large


def check_kv_view(kv_cache: torch.Tensor, head_size: int, what: str = "kv_cache") -> None:
    """Raise a ``ValueError`` that names the fix when ``kv_cache`` is not a page view kernels read.

    Accepted: ``[num_units, H, N, 2·head_size]`` with a contiguous last dim and rows, heads and
    pages that do not alias inside one page (any LBHNC / LBNHC order, any page stride).
    """
    if kv_cache.dim() != 4:
        raise ValueError(
            f"{what} must be the 4-D per-layer view [num_units, H, N, 2*head_size] that vLLM hands "
            f"a backend (build it with LayerPageGeometry.kv_view); got shape {tuple(kv_cache.shape)}"
        )
    _, heads, tokens, row = kv_cache.shape
    if row != 2 * head_size:
        raise ValueError(
            f"{what} last dim is {row}, expected 2*head_size = {2 * head_size} (K then V per "
            "token); head_size_v != head_size and packed/quantized rows are not supported"
        )
    s_page, s_head, s_tok, s_elt = kv_cache.stride()
    if s_elt != 1:
        raise ValueError(
            f"{what} last-dim stride is {s_elt}; K/V rows must be contiguous. Pass the view from "
            "LayerPageGeometry.kv_view (or vLLM's), not a transposed or .split() tensor"
        )
    head_major = s_tok >= row and s_head >= tokens * s_tok
    token_major = s_head >= row and s_tok >= heads * s_head
    if not (head_major or token_major):
        raise ValueError(
            f"{what} strides {kv_cache.stride()} make rows of one page overlap; use an LBHNC "
            "(head-major) or LBNHC (token-major) page interior"
        )
    if s_page <= 0:
        raise ValueError(f"{what} page stride must be positive (the unit), got {s_page}")
