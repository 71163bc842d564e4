"""Chunked-local attention (chunk C, Llama 4): a token attends only within its own C-token chunk.

Active pages: after n tokens the next token lies in chunk ``n // C``; blocks before that chunk's
first block are released at once, stamped stale. A hit at a chunk boundary needs nothing cached;
elsewhere it needs the current chunk's blocks (the generic rule of the base class).
"""

from __future__ import annotations

from jenga_vllm.core.errors import JengaConfigError
from jenga_vllm.core.policies.base import LayerPolicy
from jenga_vllm.core.spec import LayerTypeSpec


class ChunkedLocalPolicy(LayerPolicy):
    kind = "chunked_local"
    needs_whole_prefix = False

    def __init__(self, spec: LayerTypeSpec, block_tokens: int, hash_block_tokens: int) -> None:
        super().__init__(spec, block_tokens, hash_block_tokens)
        assert spec.chunk is not None
        self.chunk = spec.chunk

    @classmethod
    def validate_spec(cls, spec: LayerTypeSpec, max_model_len: int | None) -> None:
        if spec.chunk is None or spec.chunk <= 0:
            raise JengaConfigError(
                f"chunked-local layer type {spec.name!r} needs a positive chunk size, got {spec.chunk}"
            )
        if max_model_len is not None and spec.chunk > max_model_len:
            raise JengaConfigError(
                f"chunked-local layer type {spec.name!r}: chunk {spec.chunk} is larger than "
                f"max_model_len {max_model_len}; use kind 'full' for it or raise max_model_len"
            )

    @property
    def window_tokens(self) -> int:
        return self.chunk  # a token attends back to the start of its chunk

    def first_needed_block(self, num_computed_tokens: int) -> int:
        return (num_computed_tokens // self.chunk * self.chunk) // self.block_tokens

    def live_tokens(self, num_tokens: int) -> int:
        return num_tokens - num_tokens // self.chunk * self.chunk

    def max_live_blocks(self, num_tokens: int, in_flight_tokens: int) -> int:
        # The current chunk plus the in-flight tokens (vLLM's ChunkedLocalAttentionSpec formula).
        live = min(self.chunk + in_flight_tokens, num_tokens)
        return min(self.num_blocks(num_tokens), -(-live // self.block_tokens))

    def release_threshold(self, released_blocks: int) -> float:
        boundary = (released_blocks + 1) * self.block_tokens
        return -(-boundary // self.chunk) * self.chunk
