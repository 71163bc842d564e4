"""A tiny jenga pool for kernel tests: several layer types carved into one int8 buffer.

Builds the DESIGN.md §3 geometry by hand (unit = gcd of small pages, large page = lcm, unit ids,
null large page 0), hands out small pages scattered over shuffled large pages, and keeps every
byte that is not live K/V poisoned with NaN — the null page, released pages, unwritten slots and
other layers' rows — so a kernel that reads one wrong byte produces NaN.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from jenga_vllm.kernels import LayerPageGeometry, reference_kv_write, unit_and_large_page_bytes
from jenga_vllm.kernels.reference import first_visible_key

DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


@dataclass(frozen=True, slots=True)
class LayerType:
    """One layer type of the test model: ``num_layers`` same-shape layers sharing a page table."""

    name: str
    num_layers: int
    num_kv_heads: int
    head_size: int
    block_size: int
    window: int = 0
    chunk_size: int = 0

    def layer_page_bytes(self, dtype: torch.dtype) -> int:
        return self.num_kv_heads * self.block_size * 2 * self.head_size * DTYPE_BYTES[dtype]

    def small_page_bytes(self, dtype: torch.dtype) -> int:
        return self.num_layers * self.layer_page_bytes(dtype)


# Three types with different small pages (fp32: 16 KiB, 8 KiB, 48 KiB → unit 8 KiB, LCM 48 KiB).
FULL = LayerType("full", num_layers=2, num_kv_heads=2, head_size=32, block_size=16)
SLIDING = LayerType("sliding", num_layers=1, num_kv_heads=1, head_size=64, block_size=16, window=20)
CHUNKED = LayerType(
    "chunked", num_layers=3, num_kv_heads=4, head_size=16, block_size=32, chunk_size=32
)
THREE_TYPES = (FULL, SLIDING, CHUNKED)


@dataclass
class KVPool:
    """The int8 pool, its unit/large page, and a free list of small pages per layer type."""

    types: tuple[LayerType, ...]
    dtype: torch.dtype
    num_large_pages: int = 24
    seed: int = 0
    pool: torch.Tensor = field(init=False)
    unit_bytes: int = field(init=False)
    large_page_bytes: int = field(init=False)
    free_pages: dict[str, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        small = [t.small_page_bytes(self.dtype) for t in self.types]
        self.unit_bytes, self.large_page_bytes = unit_and_large_page_bytes(small)
        self.pool = torch.empty(self.num_large_pages * self.large_page_bytes, dtype=torch.int8)
        self.pool.view(self.dtype).fill_(float("nan"))
        # Large page 0 is the null page; the rest go to types round-robin in a shuffled order, so
        # one type's large pages are never adjacent and a sequence's pages are scattered.
        large_pages = list(range(1, self.num_large_pages))
        rng.shuffle(large_pages)
        self.free_pages = {t.name: [] for t in self.types}
        units_per_large = self.large_page_bytes // self.unit_bytes
        for i, large in enumerate(large_pages):
            t = self.types[i % len(self.types)]
            units_per_small = t.small_page_bytes(self.dtype) // self.unit_bytes
            slots = self.large_page_bytes // t.small_page_bytes(self.dtype)
            self.free_pages[t.name] += [
                large * units_per_large + j * units_per_small for j in range(slots)
            ]
        for pages in self.free_pages.values():
            rng.shuffle(pages)

    def type(self, name: str) -> LayerType:
        return next(t for t in self.types if t.name == name)

    def geometry(self, name: str, layer: int) -> LayerPageGeometry:
        t = self.type(name)
        return LayerPageGeometry(
            num_kv_heads=t.num_kv_heads,
            head_size=t.head_size,
            block_size=t.block_size,
            dtype=self.dtype,
            unit_bytes=self.unit_bytes,
            offset_bytes=layer * t.layer_page_bytes(self.dtype),
        )

    def view(self, name: str, layer: int) -> torch.Tensor:
        return self.geometry(name, layer).kv_view(self.pool)

    def allocate(self, name: str, count: int) -> list[int]:
        pages = self.free_pages[name]
        if len(pages) < count:
            raise RuntimeError(f"test pool out of {name} pages; raise num_large_pages")
        taken, self.free_pages[name] = pages[:count], pages[count:]
        return taken

    def large_page_of(self, unit: int) -> int:
        return unit * self.unit_bytes // self.large_page_bytes

    def poison(self, name: str, unit: int) -> None:
        """Release a small page: its bytes now belong to someone else (NaN here)."""
        start = unit * self.unit_bytes
        size = self.type(name).small_page_bytes(self.dtype)
        self.pool[start : start + size].view(self.dtype).fill_(float("nan"))


@dataclass
class Batch:
    """One step of a varlen batch for one layer type: page table, metadata, live K/V written."""

    block_table: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    max_query_len: int
    slot_mapping: torch.Tensor  # for every token of every sequence, -1 where not written
    key: torch.Tensor
    value: torch.Tensor


def build_batch(
    pool: KVPool,
    name: str,
    layer: int,
    seq_lens: list[int],
    query_lens: list[int],
    *,
    released: str = "null",
    generator: torch.Generator,
) -> Batch:
    """Allocate pages for ``seq_lens`` tokens per sequence and write the K/V the queries need.

    Keys before a sequence's first visible key (window / chunk) are never written, and the small
    pages wholly before it are released: ``released="null"`` points their table entries at the
    null page 0 (what vLLM's managers do), ``"stale"`` leaves the old ids in place while the pages
    hold another owner's bytes (NaN) — a kernel must skip both without reading.
    """
    t = pool.type(name)
    n = t.block_size
    max_pages = max((s + n - 1) // n for s in seq_lens)
    table = torch.zeros(len(seq_lens), max_pages + 1, dtype=torch.int32)  # +1: padding column
    slots: list[int] = []
    for s, (seq_len, q_len) in enumerate(zip(seq_lens, query_lens, strict=True)):
        pages = pool.allocate(name, (seq_len + n - 1) // n)
        table[s, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        first = first_visible_key(seq_len - q_len, t.window, t.chunk_size)
        for p in range(seq_len):
            slots.append(int(table[s, p // n]) * n + p % n if p >= first else -1)
        for i in range(first // n):
            pool.poison(name, int(table[s, i]))
            if released == "null":
                table[s, i] = 0
    total = sum(seq_lens)
    key = torch.randn(total, t.num_kv_heads, t.head_size, generator=generator).to(pool.dtype)
    value = torch.randn(total, t.num_kv_heads, t.head_size, generator=generator).to(pool.dtype)
    slot_mapping = torch.tensor(slots, dtype=torch.int64)
    reference_kv_write(key, value, pool.view(name, layer), slot_mapping)
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    return Batch(
        block_table=table,
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        max_query_len=max(query_lens),
        slot_mapping=slot_mapping,
        key=key,
        value=value,
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    """Max-abs-error check that always prints the error (and fails on any NaN)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = (actual.float() - expected.float()).abs()
    nan = int(torch.isnan(actual).sum())
    max_err = float(err.nan_to_num(float("inf")).max()) if err.numel() else 0.0
    print(f"{what}: max abs err {max_err:.3e} (bound {atol:.1e}), NaN {nan}")
    assert nan == 0, f"{what}: {nan} NaN in the output (a released / unwritten byte was read)"
    assert max_err <= atol, f"{what}: max abs err {max_err:.3e} > {atol:.1e}"
