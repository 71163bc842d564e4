"""Layout planner: small pages per layer type, the large page (their LCM), and the unit-id map.

What it owns
    From the layer types of a model (their per-token or per-request bytes, layer counts, windows)
    and one token block size, it decides:
    - each type's *small page*: ``block_tokens × Σ per-layer bytes per token`` for token-indexed
      types, ``Σ per-layer state bytes`` for state types (Mamba / linear attention);
    - the *large page*: the LCM of all small pages, so any free large page can be carved into
      small pages of any type with zero padding;
    - the *unit*: the GCD of all small pages. Every small page is addressed by the index of its first
      unit (what vLLM calls a block id): type t's page at large page k, slot j has unit id
      ``k·(LCM/u) + j·(S_t/u)``, and starts at byte ``unit_id·u`` of the pool;
    - inside a small page, layers of the type follow each other: layer i starts at byte
      ``layer_offsets[i]``.

Guard against a huge LCM
    Arbitrary state sizes (Mamba) can make the LCM the product of the sizes. When the LCM exceeds
    the caps (``max_pages_per_large × max(S_t)``; 1/16 of the pool), the largest page is padded
    to a multiple of the others' LCM if that is cheap, else pages are rounded to a granule
    (``_choose_page_sizes``); the padding is reported per type in ``TypeLayout.padding_bytes`` —
    it is never hidden.

Invariants
    - ``large_page_bytes % small_page_bytes == 0`` for every type; ``unit_bytes`` divides every
      small page and is a multiple of 16 bytes (kernels need aligned page starts);
    - ``padding_bytes == small_page_bytes - content_bytes ≥ 0``;
    - large page 0 (units ``[0, units_per_large)``) is the null page: unit id 0 means "no page".

Null page and tail slots (``lend_type``)
    A whole large page for vLLM's one null block is a fixed cost a small pool feels (Llama-4's
    is 3 full-attention blocks; vLLM's is 1). So the type with the most small pages per large
    page, the *lend type*, may use what the null page and the pool's rounding leave over:
    - ``lends_null``: large page 0 is carved for the lend type, its slot 0 is the null page and
      slots 1.. are real pages. vLLM writes attention KV only through slot mappings, which name
      -1 for padding and dummy batches, so no kernel writes the null block; the null rows of
      larger types, which now overlap those slots, are only read for tokens outside a window,
      and those reads are masked.
    - ``tail_slots``: the bytes past the last whole large page hold that many small pages of the
      lend type: a partial large page (index ``num_large_pages``) whose other slots do not exist.
    Only when every type is attention (token-indexed). A state type (Mamba) is written at its
    block table's index, which a dummy batch leaves at 0, so the null page stays whole; and a
    tail of attention pages cost a Mamba hybrid prefix hits (Nemotron-H 8B, 40 GiB: multi-turn
    0.680 → 0.626 for 2% more concurrency), so there the tail stays unused too.
    docs/design.md §3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jenga_vllm.core.errors import JengaConfigError
from jenga_vllm.core.policies import POLICY_REGISTRY
from jenga_vllm.core.spec import LayerTypeSpec

ALIGN_BYTES = 16
# Page-size choice (``_choose_page_sizes``; docs/design.md §3). A large page above 1/16 of the
# pool strands too much when a few are partly used (one per type can be); padding up to 1/64 of a
# page is cheaper than that; a pool that cannot hold even two large pages of a candidate under
# half of it would be mostly null page and slack.
MAX_LARGE_PAGE_SHARE = 16  # preferred: large page ≤ pool / 16
MAX_CHEAP_PADDING = 1 / 64  # preferred: each page padded by ≤ 1/64
FALLBACK_LARGE_PAGE_SHARE = 2  # else: large page ≤ pool / 2
DEFAULT_MAX_PAGES_PER_LARGE = 64
MAX_UNIT_IDS = 2**31 - 1  # vLLM block tables are int32


@dataclass(frozen=True, slots=True)
class TypeLayout:
    """Where one layer type's small pages live in the pool."""

    spec: LayerTypeSpec
    block_tokens: int
    content_bytes: int  # bytes of KV/state one small page really holds
    small_page_bytes: int  # content + rounding padding
    pages_per_large: int
    units_per_small: int
    layer_offsets: tuple[int, ...]  # byte offset of each layer inside the small page
    is_token_indexed: bool

    @property
    def padding_bytes(self) -> int:
        return self.small_page_bytes - self.content_bytes

    @property
    def bytes_per_token(self) -> int:
        """Content bytes one token costs across all layers of the type (0 for state types)."""
        return self.content_bytes // self.block_tokens if self.is_token_indexed else 0


@dataclass(frozen=True, slots=True)
class LayoutPlan:
    """The whole pool: per-type small pages inside LCM-sized large pages, addressed in units."""

    types: tuple[TypeLayout, ...]
    block_size: int
    unit_bytes: int
    large_page_bytes: int
    num_large_pages: int  # whole large pages, including the null large page 0
    type_index: dict[str, int] = field(default_factory=dict)
    lend_type: int = -1  # the type that uses the null page's other slots and the tail slots
    tail_slots: int = 0  # small pages of the lend type after the last whole large page

    @property
    def lends_null(self) -> bool:
        """Large page 0's slots 1.. are real pages of the lend type (whenever there is one)."""
        return self.lend_type >= 0

    @property
    def units_per_large(self) -> int:
        return self.large_page_bytes // self.unit_bytes

    @property
    def num_units(self) -> int:
        units = self.num_large_pages * self.units_per_large
        if self.tail_slots:
            units += self.tail_slots * self.types[self.lend_type].units_per_small
        return units

    @property
    def pool_bytes(self) -> int:
        return self.num_units * self.unit_bytes

    @property
    def usable_large_pages(self) -> int:
        """Whole large pages that any type can use (not the null page, not the tail)."""
        return self.num_large_pages - 1

    @property
    def null_bytes(self) -> int:
        """Bytes the null page takes: one small page of the lend type, or large page 0."""
        if self.lends_null:
            return self.types[self.lend_type].small_page_bytes
        return self.large_page_bytes

    @property
    def usable_bytes(self) -> int:
        return self.pool_bytes - self.null_bytes

    def lent_slots(self) -> list[tuple[int, range]]:
        """(large page, its real slots) of the lend type's partial large pages: the null page
        (slots 1..) and the tail page (slots 0..tail_slots-1)."""
        partial = []
        if self.lends_null:
            partial.append((0, range(1, self.types[self.lend_type].pages_per_large)))
        if self.tail_slots:
            partial.append((self.num_large_pages, range(self.tail_slots)))
        return partial

    def unit_id(self, type_idx: int, large_page: int, slot: int) -> int:
        t = self.types[type_idx]
        return large_page * self.units_per_large + slot * t.units_per_small

    def locate(self, type_idx: int, unit_id: int) -> tuple[int, int]:
        """(large page, slot) of a type's small page from its unit id."""
        large_page, unit_in_large = divmod(unit_id, self.units_per_large)
        slot, rest = divmod(unit_in_large, self.types[type_idx].units_per_small)
        if rest:
            raise JengaConfigError(
                f"unit id {unit_id} is not the start of a {self.types[type_idx].spec.name!r} "
                "small page"
            )
        return large_page, slot

    def byte_offset(self, unit_id: int) -> int:
        return unit_id * self.unit_bytes

    def describe(self) -> str:
        """One line a user understands: types, small-page bytes, large-page bytes, padding."""
        parts = [
            f"{t.spec.name}({t.spec.kind}, {t.spec.num_layers} layers): small page "
            f"{t.small_page_bytes} B = {t.block_tokens if t.is_token_indexed else 1} "
            f"{'tokens' if t.is_token_indexed else 'state'}, {t.pages_per_large}/large page, "
            f"padding {t.padding_bytes} B ({100.0 * t.padding_bytes / t.small_page_bytes:.2f}%)"
            for t in self.types
        ]
        lent = ""
        if self.lend_type >= 0:
            name = self.types[self.lend_type].spec.name
            slots = sum(len(r) for _, r in self.lent_slots())
            lent = f" + {slots} {name} pages in the null page's slots and the tail"
        return (
            f"large page {self.large_page_bytes} B, unit {self.unit_bytes} B, "
            f"{self.usable_large_pages} usable large pages{lent}; " + "; ".join(parts)
        )


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _choose_page_sizes(
    contents: list[int], max_pages_per_large: int, memory_bytes: int | None
) -> tuple[list[int], int]:
    """Small-page sizes (≥ content, 16-byte aligned) and the large page (their LCM).

    The exact LCM (zero padding) when it is at most ``max_pages_per_large ×`` the largest page
    and at most 1/16 of the pool. Otherwise the candidates are: the exact LCM; the largest page
    padded up to a multiple of the others' LCM (what Mamba hybrids need: state pages dwarf
    attention pages, and a few GB-sized large pages could not be shared out); every page padded
    up to a power-of-two granule; one size for all. Cost = the worst page's padding fraction plus
    the pool share of one large page per type (what partly used large pages can strand). First
    choice: the cheapest with padding ≤ 1/64 and a large page ≤ 1/16 of the pool; else the
    cheapest under the page-count cap and half the pool.
    """
    base = [_round_up(c, ALIGN_BYTES) for c in contents]
    biggest = max(base)
    cap = max_pages_per_large * biggest
    pool_cap = memory_bytes // MAX_LARGE_PAGE_SHARE if memory_bytes is not None else cap
    exact = math.lcm(*base)
    if exact <= min(cap, pool_cap):
        return base, exact

    # (worst padding fraction, cost, large, sizes); cost adds the pool share that partly used
    # large pages may strand, about one per type.
    candidates: list[tuple[float, float, int, list[int]]] = []

    def consider(sizes: list[int]) -> None:
        worst = max((s - b) / b for s, b in zip(sizes, base, strict=True))
        large = math.lcm(*sizes)
        stranded = len(sizes) * large / memory_bytes if memory_bytes else 0.0
        candidates.append((worst, worst + stranded, large, sizes))

    consider(base)
    i_big = base.index(biggest)
    others = [b for i, b in enumerate(base) if i != i_big]
    if others:
        padded = _round_up(biggest, math.lcm(*others))
        consider([padded if i == i_big else b for i, b in enumerate(base)])
    granule = ALIGN_BYTES
    while granule <= biggest:
        consider([_round_up(b, granule) for b in base])
        granule *= 2
    consider([biggest] * len(base))  # one size for all: LCM == the largest page

    def best(limit: float, max_padding: float = math.inf) -> tuple[list[int], int] | None:
        fits = [c for c in candidates if c[2] <= limit and c[0] <= max_padding]
        if not fits:
            return None
        _, _, large, sizes = min(fits, key=lambda c: (c[1], c[2]))
        return sizes, large

    half_pool = memory_bytes // FALLBACK_LARGE_PAGE_SHARE if memory_bytes is not None else cap
    choice = (
        best(min(cap, pool_cap), MAX_CHEAP_PADDING)
        or best(min(cap, half_pool))
        or best(math.inf)  # a pool too small for two large pages: plan_layout says so
    )
    assert choice is not None
    return choice


def _validate(
    specs: list[LayerTypeSpec], block_size: int, max_model_len: int | None, kinds: dict
) -> None:
    if block_size <= 0:
        raise JengaConfigError(f"block_size must be a positive number of tokens, got {block_size}")
    if not specs:
        raise JengaConfigError("no layer types given: a layout needs at least one layer type")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise JengaConfigError(
                f"layer type name {spec.name!r} is used twice; names must be unique"
            )
        seen.add(spec.name)
        if spec.kind not in kinds:
            raise JengaConfigError(
                f"layer type {spec.name!r} has unknown kind {spec.kind!r}; "
                f"known kinds: {', '.join(sorted(kinds))} (register a new policy to add one)"
            )
        if not spec.layer_bytes:
            raise JengaConfigError(f"layer type {spec.name!r} has no layers")
        bad = [b for b in spec.layer_bytes if not isinstance(b, int) or b <= 0]
        if bad:
            raise JengaConfigError(
                f"layer type {spec.name!r} has non-positive or non-integer layer bytes {bad[:3]}; "
                "every layer needs > 0 bytes per token (or per state)"
            )
        # Item pages (vision embeddings) are not indexed by token blocks: any page length.
        if spec.block_tokens is not None and (
            spec.block_tokens <= 0
            or (spec.block_tokens % block_size and not kinds[spec.kind].holds_items)
        ):
            raise JengaConfigError(
                f"layer type {spec.name!r}: block_tokens={spec.block_tokens} must be a positive "
                f"multiple of the common block size {block_size}"
            )
        kinds[spec.kind].validate_spec(spec, max_model_len)


def _layer_extents(layer_bytes: tuple[int, ...], block_tokens: int, is_tok: bool) -> list[int]:
    """Bytes each layer occupies in a small page. A state layer's slot is rounded up to 16 bytes
    so the next layer's states start aligned for any dtype view (token pages already are)."""
    if is_tok:
        return [b * block_tokens for b in layer_bytes]
    return [_round_up(b, ALIGN_BYTES) for b in layer_bytes]


def plan_layout(
    specs: list[LayerTypeSpec] | tuple[LayerTypeSpec, ...],
    block_size: int,
    memory_bytes: int | None = None,
    *,
    max_model_len: int | None = None,
    max_pages_per_large: int = DEFAULT_MAX_PAGES_PER_LARGE,
    lend_slots: bool = True,
) -> LayoutPlan:
    """Plan the two-level layout for ``specs`` and (optionally) a pool of ``memory_bytes``.

    ``memory_bytes`` None plans the geometry only (``num_large_pages`` = 1, the null page).
    ``lend_slots`` False keeps the whole null page and the tail unused (for comparisons).
    Raises JengaConfigError for impossible inputs, naming the fix.
    """
    specs = list(specs)
    _validate(specs, block_size, max_model_len, POLICY_REGISTRY)
    if max_pages_per_large < 1:
        raise JengaConfigError(f"max_pages_per_large must be ≥ 1, got {max_pages_per_large}")

    contents: list[int] = []
    block_tokens: list[int] = []
    token_indexed: list[bool] = []
    for spec in specs:
        is_tok = POLICY_REGISTRY[spec.kind].is_token_indexed
        bt = spec.block_tokens or block_size
        token_indexed.append(is_tok)
        block_tokens.append(bt)
        contents.append(sum(_layer_extents(spec.layer_bytes, bt, is_tok)))

    sizes, large = _choose_page_sizes(contents, max_pages_per_large, memory_bytes)
    unit = math.gcd(*sizes)
    assert unit % ALIGN_BYTES == 0 and all(large % s == 0 for s in sizes)

    types = []
    for spec, content, size, bt, is_tok in zip(
        specs, contents, sizes, block_tokens, token_indexed, strict=True
    ):
        per_layer = _layer_extents(spec.layer_bytes, bt, is_tok)
        offsets = tuple(sum(per_layer[:i]) for i in range(len(per_layer)))
        types.append(
            TypeLayout(
                spec=spec,
                block_tokens=bt,
                content_bytes=content,
                small_page_bytes=size,
                pages_per_large=large // size,
                units_per_small=size // unit,
                layer_offsets=offsets,
                is_token_indexed=is_tok,
            )
        )

    num_large = 1
    if memory_bytes is not None:
        if memory_bytes < 2 * large:
            error = JengaConfigError(
                f"KV memory of {memory_bytes} bytes holds fewer than 2 large pages of {large} bytes "
                "(one is the null page); give more KV cache memory "
                "(e.g. --kv-cache-memory-bytes) or use fewer/smaller layers"
            )
            error.min_bytes = 2 * large  # type: ignore[attr-defined]
            raise error
        num_large = memory_bytes // large
    lend_type, tail_slots = -1, 0
    lenders = [i for i, t in enumerate(types) if t.pages_per_large > 1 and lend_slots]
    if lenders and all(t.is_token_indexed for t in types):
        lend_type = max(lenders, key=lambda i: types[i].pages_per_large)
        if memory_bytes is not None:
            tail_slots = (memory_bytes - num_large * large) // types[lend_type].small_page_bytes
    num_units = num_large * (large // unit) + tail_slots * types[lend_type].units_per_small
    if num_units > MAX_UNIT_IDS:
        raise JengaConfigError(
            f"{num_units} unit ids exceed vLLM's int32 block ids; use less KV memory per engine"
        )
    return LayoutPlan(
        types=tuple(types),
        block_size=block_size,
        unit_bytes=unit,
        large_page_bytes=large,
        num_large_pages=num_large,
        type_index={t.spec.name: i for i, t in enumerate(types)},
        lend_type=lend_type,
        tail_slots=tail_slots,
    )
