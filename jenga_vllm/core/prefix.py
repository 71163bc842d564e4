"""Prefix index: block-hash chains and, per layer type, the page that caches each block.

Hash chains are vLLM's: block i's hash covers (hash of block i-1, the block's tokens, extra keys
such as multimodal hashes / LoRA / cache salt), so equal hashes mean equal prefixes. The core
treats hashes as opaque keys; inside vLLM the adapter passes vLLM's own ``request.block_hashes``.
``block_hashes`` here is the same scheme for the simulator and tests.

Invariant: ``page.block_hash is not None`` ⇔ the page is this type's entry for that hash; at most
one page per (type, hash) — a second page computing the same block stays unhashed.

Journal: with ``journal`` set to a list, every entry removed from the index (an eviction) is
appended as ``(type_idx, key)`` — what an engine adapter turns into "block removed" events
(vLLM's KV events). Insertions are journalled by ``JengaCache.cache_blocks``, which knows the
block positions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from jenga_vllm.core.pages import SmallPage

ROOT_HASH = 0x6A656E6761  # "jenga"


def hash_block(parent: int, tokens: Sequence[int], extra_keys: Hashable = None) -> int:
    return hash((parent, tuple(tokens), extra_keys))


def block_hashes(
    tokens: Sequence[int], block_size: int, extra_keys: Hashable = None, parent: int = ROOT_HASH
) -> list[int]:
    """Chained hashes of every *full* block of ``tokens``."""
    hashes = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash_block(parent, tokens[start : start + block_size], extra_keys)
        hashes.append(parent)
    return hashes


class PrefixIndex:
    """Per layer type: block hash → the small page holding that block's KV (or state)."""

    def __init__(self, num_types: int) -> None:
        self.by_type: list[dict[Hashable, SmallPage]] = [{} for _ in range(num_types)]
        self.journal: list[tuple[int, Hashable]] | None = None
        # type index → called with the key of each of its pages leaving the index (an engine
        # adapter's item cache learns that an entry it keeps is gone)
        self.on_remove: dict[int, Callable[[Hashable], None]] = {}

    def get(self, type_idx: int, key: Hashable) -> SmallPage | None:
        return self.by_type[type_idx].get(key)

    def insert(self, page: SmallPage, key: Hashable) -> bool:
        """Name ``page`` as the cached copy of ``key``; False if another page already is."""
        entries = self.by_type[page.type_idx]
        if key in entries:
            return False
        entries[key] = page
        page.block_hash = key
        return True

    def remove(self, page: SmallPage) -> None:
        del self.by_type[page.type_idx][page.block_hash]
        if self.journal is not None:
            self.journal.append((page.type_idx, page.block_hash))
        key, page.block_hash = page.block_hash, None
        if self.on_remove:
            listener = self.on_remove.get(page.type_idx)
            if listener is not None:
                listener(key)

    def __len__(self) -> int:
        return sum(len(d) for d in self.by_type)
