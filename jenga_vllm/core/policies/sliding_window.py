"""Sliding-window attention (window W): a token attends to itself and the W-1 tokens before it.

Active pages: after n tokens the next token (position n) needs positions ≥ n-W+1, so blocks
before ``(n-W+1) // block_tokens`` are released at once, stamped stale.
Valid hits: L is valid when the blocks holding the last W-1 tokens before L are cached (the
generic rule of the base class); also any L inside an unbroken cached run from token 0.
"""

from __future__ import annotations

from jenga_vllm.core.errors import JengaConfigError
from jenga_vllm.core.policies.base import LayerPolicy
from jenga_vllm.core.spec import LayerTypeSpec


class SlidingWindowPolicy(LayerPolicy):
    kind = "sliding_window"
    needs_whole_prefix = False

    def __init__(self, spec: LayerTypeSpec, block_tokens: int, hash_block_tokens: int) -> None:
        super().__init__(spec, block_tokens, hash_block_tokens)
        assert spec.window is not None
        self.window = spec.window

    @classmethod
    def validate_spec(cls, spec: LayerTypeSpec, max_model_len: int | None) -> None:
        if spec.window is None or spec.window <= 0:
            raise JengaConfigError(
                f"sliding-window layer type {spec.name!r} needs a positive window, got {spec.window}"
            )
        if max_model_len is not None and spec.window > max_model_len:
            raise JengaConfigError(
                f"sliding-window layer type {spec.name!r}: window {spec.window} is larger than "
                f"max_model_len {max_model_len}; use kind 'full' for it or raise max_model_len"
            )

    @property
    def window_tokens(self) -> int:
        return self.window

    def first_needed_block(self, num_computed_tokens: int) -> int:
        return max(0, num_computed_tokens - self.window + 1) // self.block_tokens

    def release_threshold(self, released_blocks: int) -> float:
        return (released_blocks + 1) * self.block_tokens + self.window - 1

    def live_tokens(self, num_tokens: int) -> int:
        return min(num_tokens, self.window - 1)

    def max_live_blocks(self, num_tokens: int, in_flight_tokens: int) -> int:
        # The window before the oldest in-flight token, the in-flight tokens, and one block of
        # misalignment (vLLM's SlidingWindowSpec.max_memory_usage_bytes, the same formula).
        live = min(self.window - 1 + in_flight_tokens, num_tokens)
        return min(self.num_blocks(num_tokens), -(-live // self.block_tokens) + 1)
