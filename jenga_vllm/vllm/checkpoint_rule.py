"""When vLLM's worker writes a Mamba prefill checkpoint inside a forward pass, asked of vLLM's
own helpers: the manager gives that state column a page in that step, and only then."""

from __future__ import annotations

from dataclasses import dataclass

from vllm.v1.kv_cache_interface import (
    MambaSpec,
    get_mamba_prefill_checkpoint_position,
    is_mamba_prefill_checkpoint_valid,
)

from jenga_vllm.vllm.kv_config import JengaKVCacheConfig


@dataclass(frozen=True)
class MambaCheckpointRule:
    """When vLLM's worker exports a Mamba prefill checkpoint inside a forward pass — vLLM's own
    helpers, with the worker's arguments (model_executor/layers/mamba/checkpoint.py): the state
    at the last block boundary of a prefill chunk ``[start, end)`` is written into its own block
    exactly when ``is_mamba_prefill_checkpoint_valid`` holds (under the EAGLE/MTP block drop one
    block before that boundary). Jenga gives that block a page then, and only then."""

    block_tokens: int
    hash_block_tokens: int
    alignment_tokens: int
    checkpoint_alignment: int | None
    drops_eagle_block: bool = False

    @classmethod
    def for_config(
        cls, config: JengaKVCacheConfig, hash_block_size: int, drops_eagle_block: bool = False
    ) -> MambaCheckpointRule:
        specs = [
            g.kv_cache_spec
            for g in config.kv_cache_groups
            if isinstance(g.kv_cache_spec, MambaSpec)
            and g.kv_cache_spec.mamba_cache_mode == "align"
        ]
        if not specs or not all(s.num_prefill_checkpoint_blocks > 0 for s in specs):
            return cls(1, 1, 1, None)  # no state type exports checkpoints: never
        alignment = getattr(config, "cache_hit_alignment_tokens", None) or hash_block_size
        return cls(
            specs[0].block_size,
            hash_block_size,
            alignment,
            specs[0].prefill_checkpoint_alignment,
            drops_eagle_block,
        )

    def is_written(self, start: int, end: int) -> bool:
        if self.checkpoint_alignment is None:
            return False
        position = get_mamba_prefill_checkpoint_position(
            end, self.alignment_tokens, self.drops_eagle_block
        )
        return is_mamba_prefill_checkpoint_valid(
            start,
            end,
            position,
            self.hash_block_tokens,
            self.block_tokens,
            self.checkpoint_alignment,
        )
