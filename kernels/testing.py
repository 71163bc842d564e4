"""What the kernel tests and the GPU check share (installed as ``jenga_vllm.kernels.testing``).

A tiny jenga pool: several layer types carved into one int8 buffer.

Builds the docs/design.md §3 geometry by hand (unit = gcd of small pages, large page = lcm, unit ids,
null large page 0), hands out small pages scattered over shuffled large pages, and keeps every
byte that is not live K/V poisoned with NaN — the null page, released pages, unwritten slots and
other layers' rows — so a kernel that reads one wrong byte produces NaN. Then the case lists
(``CASES`` for paged attention, ``KV_WRITE_CASES`` for the KV write) and ``run_case``, which
runs one attention case on any device against the reference on the CPU.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import torch

from .geometry import LayerPageGeometry, unit_and_large_page_bytes
from .paged_attention import LaunchConfig, paged_attention
from .reference import first_visible_key, reference_kv_write, reference_paged_attention

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


# ---- paged attention cases ------------------------------------------------------------
# Max abs error bounds per dtype (outputs are O(1)); fp16/bf16 include rounding P to the dtype.
ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class AttentionCase:
    """One batch of one layer type. ``group`` = query heads per kv head (1: MHA, 4/8: GQA)."""

    id: str
    layer_type: str
    dtype: str
    group: int
    seq_lens: list[int]
    query_lens: list[int]
    layer: int = -1  # which layer of the type (-1: the last, whose offset is non-zero)
    softcap: float = 0.0
    sinks: bool = False
    released: str = "null"
    config: LaunchConfig | None = None
    extra: dict = field(default_factory=dict)


SPLIT4 = LaunchConfig(block_m=16, tile_n=16, num_warps=4, num_stages=1, num_splits=4)
WIDE_TILE = LaunchConfig(block_m=32, tile_n=64, num_warps=4, num_stages=1)  # tile spans 4 pages
SUB_PAGE_TILE = LaunchConfig(block_m=16, tile_n=16, num_warps=4, num_stages=1)  # half a page

CASES = [
    # Full attention: prefill at block boundaries (k·16 ± 1, k·16), decode, mixed.
    AttentionCase(
        "full-fp32-mha-prefill-boundaries", "full", "fp32", 1, [33, 16, 47], [33, 16, 47]
    ),
    AttentionCase("full-bf16-gqa4-mixed", "full", "bf16", 4, [40, 17, 15, 64], [8, 1, 1, 64]),
    AttentionCase("full-fp16-gqa8-decode", "full", "fp16", 8, [31, 33, 1, 100], [1, 1, 1, 1]),
    AttentionCase("full-fp32-gqa4-first-layer", "full", "fp32", 4, [48, 9], [3, 9], layer=0),
    AttentionCase(
        "full-bf16-gqa4-softcap-sinks",
        "full",
        "bf16",
        4,
        [29, 49],
        [29, 1],
        softcap=8.0,
        sinks=True,
    ),
    AttentionCase(
        "full-fp32-gqa8-wide-tile", "full", "fp32", 8, [65, 3, 32], [20, 3, 1], config=WIDE_TILE
    ),
    # Sliding window 20: released pages as null ids and as stale ids pointing at NaN.
    AttentionCase("sliding-fp32-gqa4-mixed-null", "sliding", "fp32", 4, [70, 33, 15], [9, 1, 15]),
    AttentionCase(
        "sliding-bf16-mha-decode-stale",
        "sliding",
        "bf16",
        1,
        [70, 47, 49, 21],
        [1, 1, 1, 1],
        released="stale",
    ),
    AttentionCase(
        "sliding-fp16-gqa8-prefill-chunk-stale",
        "sliding",
        "fp16",
        8,
        [50, 64],
        [18, 31],
        released="stale",
    ),
    AttentionCase(
        "sliding-bf16-gqa8-softcap-sinks",
        "sliding",
        "bf16",
        8,
        [81, 24],
        [1, 24],
        softcap=5.0,
        sinks=True,
    ),
    AttentionCase(
        "sliding-fp32-gqa4-wide-tile-null", "sliding", "fp32", 4, [97, 70], [5, 1], config=WIDE_TILE
    ),
    # Chunked local (chunk 32, block 32): chunk starts release whole pages.
    AttentionCase("chunked-fp32-mha-mixed", "chunked", "fp32", 1, [65, 95, 31], [3, 1, 31]),
    AttentionCase(
        "chunked-bf16-gqa8-decode-stale",
        "chunked",
        "bf16",
        8,
        [64, 96, 33],
        [1, 1, 1],
        released="stale",
    ),
    AttentionCase(
        "chunked-fp16-gqa4-sub-page-tile",
        "chunked",
        "fp16",
        4,
        [63, 40],
        [40, 8],
        config=SUB_PAGE_TILE,
    ),
    # Split-key decode (flash-decoding partials + merge), with windows and sinks.
    AttentionCase(
        "full-bf16-gqa4-split", "full", "bf16", 4, [100, 7, 33], [1, 1, 1], config=SPLIT4
    ),
    AttentionCase(
        "sliding-fp32-mha-split-sinks",
        "sliding",
        "fp32",
        1,
        [90, 20],
        [1, 1],
        sinks=True,
        config=SPLIT4,
    ),
    AttentionCase(
        "chunked-fp16-gqa8-split-mixed", "chunked", "fp16", 8, [70, 40], [6, 1], config=SPLIT4
    ),
]


def run_case(
    case: AttentionCase,
    device: str = "cpu",
    types: tuple[LayerType, ...] = THREE_TYPES,
    num_large_pages: int = 40,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel output, reference output) for ``case``; the kernel runs on ``device`` (the pool is
    built on the CPU and copied there)."""
    dtype = DTYPES[case.dtype]
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    pool = KVPool(types, dtype, num_large_pages=num_large_pages, seed=len(case.id))
    # Fill the other types too, so their live pages sit between this type's pages.
    for other in types:
        if other.name != case.layer_type:
            build_batch(pool, other.name, 0, case.seq_lens, case.query_lens, generator=gen)
    t = pool.type(case.layer_type)
    layer = case.layer % t.num_layers
    batch = build_batch(
        pool, t.name, layer, case.seq_lens, case.query_lens, released=case.released, generator=gen
    )
    num_q_heads = t.num_kv_heads * case.group
    query = torch.randn(int(batch.query_start_loc[-1]), num_q_heads, t.head_size, generator=gen).to(
        dtype
    )
    sinks = torch.randn(num_q_heads, generator=gen) if case.sinks else None
    kwargs = dict(window=t.window, chunk_size=t.chunk_size, softcap=case.softcap)
    scale = t.head_size**-0.5
    ref = reference_paged_attention(
        query, pool.view(t.name, layer), batch.block_table, batch.query_start_loc, batch.seq_lens,
        scale, sinks=sinks, **kwargs,
    )  # fmt: skip
    on = torch.device(device)
    out = paged_attention(
        query.to(on),
        pool.geometry(t.name, layer).kv_view(pool.pool.to(on)),
        batch.block_table.to(on),
        batch.query_start_loc.to(on),
        batch.seq_lens.to(on),
        scale,
        max_query_len=batch.max_query_len,
        config=case.config,
        sinks=sinks.to(on) if sinks is not None else None,
        **kwargs,
    )
    return out.cpu(), ref


# ---- KV write cases --------------------------------------------------------------------
@dataclass(frozen=True)
class KvWriteCase:
    """One kv_write batch."""

    id: str
    layer_type: str
    dtype: str
    num_tokens: int
    padding_every: int = 0  # every k-th token gets slot -1 (vLLM's padded tokens)
    fused_qkv: bool = False  # key/value are strided slices of one [T, (Hq+2H)·d] buffer


KV_WRITE_CASES = [
    KvWriteCase("full-fp32-all-layers", "full", "fp32", 37),
    KvWriteCase("full-bf16-padding", "full", "bf16", 40, padding_every=3),
    KvWriteCase("sliding-fp16-fused-qkv", "sliding", "fp16", 33, fused_qkv=True),
    KvWriteCase(
        "sliding-fp32-padding-fused-qkv", "sliding", "fp32", 17, padding_every=2, fused_qkv=True
    ),
    KvWriteCase("chunked-bf16-fused-qkv", "chunked", "bf16", 65, fused_qkv=True),
    KvWriteCase("chunked-fp16-padding", "chunked", "fp16", 64, padding_every=5),
]


def make_kv(case: KvWriteCase, num_kv_heads: int, head_size: int, gen: torch.Generator):
    dtype = DTYPES[case.dtype]
    shape = (case.num_tokens, num_kv_heads, head_size)
    if not case.fused_qkv:
        return (
            torch.randn(shape, generator=gen).to(dtype),
            torch.randn(shape, generator=gen).to(dtype),
        )
    qkv = torch.randn(case.num_tokens, (4 + 2) * num_kv_heads * head_size, generator=gen).to(dtype)
    q_end = 4 * num_kv_heads * head_size
    k_end = q_end + num_kv_heads * head_size
    key = qkv[:, q_end:k_end].view(shape)
    value = qkv[:, k_end:].view(shape)
    assert not key.is_contiguous()
    return key, value
