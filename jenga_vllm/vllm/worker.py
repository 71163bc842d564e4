"""vLLM boundary, worker side: zeroing new small pages in jenga's unit-id layout.

What it owns
    ``UnitZeroer``: the worker's block zeroer for a ``JengaKVCacheConfig``. vLLM zeroes new
    blocks before first use when its rule says so (Mamba state is read before it is fully
    written; mixed precisions decode stale bytes to NaN). Its own ``KVBlockZeroer`` clears, for
    every attention layer, one layer page at each block id — right for one page size per id,
    wrong for jenga's overlapping unit ids, where it would clear bytes of neighbouring small
    pages. Jenga's scheduler side sends the unit ids that make up each new small page
    (``JengaKVCacheManager.take_new_block_ids``), so zeroing is exactly "clear these units".

Invariants: every unit id sent is < ``num_blocks`` (the number of units); a unit is
``plan.unit_bytes`` contiguous bytes at ``id * unit_bytes`` of the one backing allocation.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.logger import init_logger

logger = init_logger(f"vllm.{__name__}")


class UnitZeroer:
    """Clears whole units of the KV backing buffer; ``zero_block_ids`` is vLLM's call."""

    def __init__(self, buffer: torch.Tensor, unit_bytes: int, num_units: int) -> None:
        assert buffer.dtype == torch.int8 and buffer.numel() >= unit_bytes * num_units
        self.rows = buffer[: unit_bytes * num_units].view(num_units, unit_bytes)

    @classmethod
    def for_runner(cls, runner: Any) -> UnitZeroer:
        """The zeroer of a GPU/CPU model runner whose KV cache is a JengaKVCacheConfig."""
        config = runner.kv_cache_config
        context = runner.compilation_config.static_forward_context
        layer = config.kv_cache_tensors[0].layers[0]
        view = context[layer].kv_cache
        if isinstance(view, (list, tuple)):  # Mamba layers bind a tuple of state views
            view = view[0]
        storage = view.untyped_storage()
        buffer = torch.empty(0, dtype=torch.int8, device=view.device)
        buffer.set_(storage, 0, (storage.nbytes(),), (1,))
        logger.info(
            "Jenga zeroes new small pages before first use (%d units of %d B)",
            config.num_blocks,
            config.plan.unit_bytes,
        )
        return cls(buffer, config.plan.unit_bytes, config.num_blocks)

    def zero_block_ids(self, block_ids: list[int]) -> None:
        if not block_ids:
            return
        index = torch.tensor(block_ids, dtype=torch.long).to(self.rows.device, non_blocking=True)
        self.rows.index_fill_(0, index, 0)
