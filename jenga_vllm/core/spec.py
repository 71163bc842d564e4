"""The leaf of the core: what describes a layer type, and the core's debug switch.

Every other core module may import this one; it imports nothing from the package but errors, so
``layout`` → ``policies`` → ``spec`` and ``cache`` → ``invariants`` → ``spec`` have no cycles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from jenga_vllm.core.errors import JengaConfigError

# Whole-pool invariant check after every state-changing operation that is not a fast path
# (O(pool): tests and debugging only; `make test` turns it on).
DEBUG_INVARIANTS = os.environ.get("JENGA_DEBUG_INVARIANTS", "") not in ("", "0")


@dataclass(frozen=True, slots=True)
class LayerTypeSpec:
    """One layer type of a model: a group of layers that share a policy and a page table.

    ``layer_bytes[i]`` is layer i's bytes per token (token-indexed types) or its whole state bytes
    (state types such as Mamba). ``block_tokens`` overrides the common block size for this type
    (it must be a multiple of it): Mamba uses it as its checkpoint interval.
    ``exports_checkpoints`` (state types): the engine writes a prefill checkpoint from inside the
    forward pass, into a page of its own (vLLM's Mamba-2); False where states are written only
    at prefill-chunk ends (vLLM's Gated DeltaNet), so a request never holds that third page.
    ``speculative_blocks`` (state types, speculative decoding): K slots after the running state
    where the engine writes the state after each of a step's K draft tokens (vLLM's
    ``MambaSpec.num_speculative_blocks``); a request holds them beside its running state.
    ``hits_drop_last_block`` (state types, EAGLE/MTP): a prefix hit ends one block before the
    attention types' match (vLLM's ``use_eagle_block_drop``), so the prefill checkpoint sits one
    block before the last boundary (vLLM's ``get_mamba_prefill_checkpoint_position(...,
    drop_eagle_block=True)``) and the decode-time state a later hit ends at is the one a block
    before the newest.
    """

    name: str
    kind: str
    layer_bytes: tuple[int, ...]
    window: int | None = None
    chunk: int | None = None
    block_tokens: int | None = None
    layer_names: tuple[str, ...] = ()
    exports_checkpoints: bool = True
    speculative_blocks: int = 0
    hits_drop_last_block: bool = False

    @staticmethod
    def of(
        kind: str,
        layer_bytes: tuple[int, ...],
        *,
        window: int | None = None,
        chunk: int | None = None,
        block_tokens: int | None = None,
        layer_names: tuple[str, ...] = (),
        exports_checkpoints: bool = True,
        speculative_blocks: int = 0,
        hits_drop_last_block: bool = False,
    ) -> LayerTypeSpec:
        """The one builder engines and planners use: the type's name follows from its kind and
        its window or chunk (``full``, ``sliding_window_4096``, ``chunked_local_8192``,
        ``mamba``, ``cross_attention``), so every tool names a type the same way."""
        extent = window if window is not None else chunk
        name = kind if extent is None else f"{kind}_{extent}"
        return LayerTypeSpec(
            name,
            kind,
            layer_bytes,
            window,
            chunk,
            block_tokens,
            layer_names,
            exports_checkpoints,
            speculative_blocks,
            hits_drop_last_block,
        )

    @staticmethod
    def uniform(
        name: str,
        kind: str,
        num_layers: int,
        bytes_per_layer: int,
        **extra: object,
    ) -> LayerTypeSpec:
        """A type whose ``num_layers`` layers all have ``bytes_per_layer`` (per token or state)."""
        if num_layers <= 0:
            raise JengaConfigError(
                f"layer type {name!r}: num_layers must be positive, got {num_layers}"
            )
        return LayerTypeSpec(name, kind, (bytes_per_layer,) * num_layers, **extra)  # type: ignore[arg-type]

    @property
    def num_layers(self) -> int:
        return len(self.layer_bytes)
