"""vLLM 0.32's own KV-cache layout decision for a model's real shapes — by calling vLLM.

What it owns
    Given ``ModelShapes`` (model_shapes.py), a KV byte budget and a max model length, it builds a
    real ``VllmConfig`` (a real ``ModelConfig`` from the model's text config, ``CacheConfig``,
    ``SchedulerConfig``), one real ``KVCacheSpec`` per layer (``FullAttentionSpec``,
    ``SlidingWindowSpec``, ``ChunkedLocalAttentionSpec``, ``MambaSpec``) and then lets vLLM decide,
    exactly along EngineCore's start-up path (``v1/engine/core.py`` ``_initialize_kv_caches``):

    1. hybrid Mamba models: ``Platform._align_hybrid_block_size`` (``platforms/interface.py``)
       inflates the attention block and pads the Mamba page — with a GPU attention backend class
       (Triton, kernel blocks ``MultipleOf(16)``), since the issue calibrates on GPU shapes;
       state shapes and dtypes come from the vLLM model class itself
       (``get_mamba_state_shape_from_config`` / ``get_mamba_state_dtype_from_config``);
    2. ``get_kv_cache_configs`` → ``get_kv_cache_groups`` (grouping, page unification, or
       ``unify_hybrid_kv_cache_specs`` when the hybrid manager is off) and
       ``get_kv_cache_config_from_groups`` (``num_blocks`` for the budget);
    3. ``generate_scheduler_kv_cache_config``, ``resolve_kv_cache_block_sizes`` and
       ``get_max_concurrency_for_kv_cache_config`` (the figure vLLM logs at start-up).

    Nothing here re-derives vLLM's formulas: change a spec and vLLM's decision changes
    (tests/benchmarks/test_simulate.py checks it).

Hybrid manager (HMA) modes
    ``"default"``: what vLLM decides on its own (``VllmConfig.__post_init__``: off for chunked
    local attention, i.e. Llama-4); ``"on"``: forced on (for Llama-4 this needs
    ``VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE=1``, set here for the call); ``"off"``:
    ``--disable-hybrid-kv-cache-manager`` (uniform paging, what KV-connector users get). Mamba
    hybrids cannot run with it off: vLLM raises, and ``vllm_layout`` raises ``VllmLayoutError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jenga_vllm.tools import pil_image_processors
from jenga_vllm.tools.model_shapes import ModelShapes

HMA_MODES = ("default", "on", "off")
CONFIG_CACHE_DIR = Path(tempfile.gettempdir()) / "jenga_vllm_text_configs"


class VllmLayoutError(RuntimeError):
    """vLLM itself refused this configuration (its message is kept)."""


@dataclass(frozen=True, slots=True)
class GroupLayout:
    """One vLLM KV-cache group as vLLM decided it."""

    kind: str  # spec class name
    num_layers: int
    block_size: int  # tokens per block of this group
    page_bytes: int  # bytes one block of this group occupies per layer slot (padded)
    real_page_bytes: int  # bytes of KV it really holds per layer slot
    window: int | None
    chunk: int | None


@dataclass
class VllmLayout:
    """vLLM 0.32's layout for one model, budget and max_model_len."""

    hma: str
    hybrid_enabled: bool
    vllm_config: Any
    kv_cache_config: Any  # the scheduler's KVCacheConfig
    groups: tuple[GroupLayout, ...]
    num_blocks: int  # including the null block
    block_bytes: int  # bytes one block id costs across all groups
    scheduler_block_size: int
    hash_block_size: int
    max_concurrency: float  # vLLM's start-up "Maximum concurrency" for max_model_len
    max_model_len: int

    @property
    def pool_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    def make_manager(self, enable_caching: bool = True):
        """A real vLLM ``KVCacheManager`` over this layout (what the scheduler would build)."""
        from vllm.v1.core.kv_cache_manager import KVCacheManager

        return KVCacheManager(
            kv_cache_config=self.kv_cache_config,
            max_model_len=self.max_model_len,
            scheduler_block_size=self.scheduler_block_size,
            hash_block_size=self.hash_block_size,
            max_in_flight_tokens=self.vllm_config.max_in_flight_tokens,
            enable_caching=enable_caching,
        )

    def describe(self) -> str:
        parts = [
            f"{g.kind}×{g.num_layers}: block {g.block_size} tok, page {g.page_bytes} B"
            + (
                f" (padding {g.page_bytes - g.real_page_bytes} B)"
                if g.page_bytes != g.real_page_bytes
                else ""
            )
            for g in self.groups
        ]
        return (
            f"vLLM 0.32 (HMA {self.hma}, {'on' if self.hybrid_enabled else 'off'}): "
            f"{len(self.groups)} groups, {self.num_blocks} blocks × {self.block_bytes} B, "
            f"max concurrency {self.max_concurrency:.2f}x @ {self.max_model_len}; "
            + "; ".join(parts)
        )


# ---- a minimal real VllmConfig ---------------------------------------------------------------
def _text_config_dir(shapes: ModelShapes) -> Path:
    text = json.dumps(shapes.text_config, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = CONFIG_CACHE_DIR / f"{shapes.name}-{digest}"
    if not (path / "config.json").is_file():
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f"config.json.{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(path / "config.json")
    return path


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _quiet_vllm() -> None:
    logging.getLogger("vllm").setLevel(logging.ERROR)


def _model_config(config_dir: str, dtype: str, max_model_len: int):
    # Fresh each time: VllmConfig.__post_init__ marks a ModelConfig as updated and would skip the
    # model-specific config updates (e.g. Mamba block size) for a second VllmConfig.
    from vllm.config import ModelConfig

    # vLLM inspects the architecture in a subprocess, and some text-only classes (Qwen3.5) live
    # in files that import transformers' torchvision image processors.
    pil_image_processors.install()
    with pil_image_processors.in_child_processes():
        return ModelConfig(
            model=config_dir,
            skip_tokenizer_init=True,
            dtype=dtype,
            max_model_len=max_model_len,
        )


def build_vllm_config(
    shapes: ModelShapes,
    *,
    max_model_len: int,
    block_size: int = 16,
    hma: str = "default",
    enable_prefix_caching: bool = True,
    prefix_match_unit: int | None = None,
    num_speculative_tokens: int = 0,
):
    """A real VllmConfig for ``shapes`` (text model only; no weights, no tokenizer).

    ``num_speculative_tokens`` K > 0 adds a speculative config proposing K tokens. The target's
    KV-cache specs depend on K only (Mamba conv states grow by K rows, ``MambaSpec`` reserves K
    state blocks), not on the method, so the weightless n-gram proposer stands in for MTP or
    EAGLE; a drafter's own KV layers are not modelled.
    """
    if hma not in HMA_MODES:
        raise ValueError(f"hma must be one of {HMA_MODES}, got {hma!r}")
    _quiet_vllm()
    from vllm.config import CacheConfig, SchedulerConfig, SpeculativeConfig, VllmConfig

    model_config = _model_config(str(_text_config_dir(shapes)), shapes.dtype, max_model_len)
    disable = {"default": None, "on": False, "off": True}[hma]
    allow_chunked = "1" if hma == "on" else None
    scheduler_config = SchedulerConfig(
        max_model_len=max_model_len,
        is_encoder_decoder=False,
        disable_hybrid_kv_cache_manager=disable,
        max_num_batched_tokens=max(8192, block_size),
    )
    cache_config = CacheConfig(
        block_size=block_size,
        enable_prefix_caching=enable_prefix_caching,
        cache_dtype="auto",
        **({"prefix_match_unit": prefix_match_unit} if prefix_match_unit else {}),
    )
    with (
        _env("VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE", allow_chunked),
        _gpu_ssm_state_dtype(),
    ):
        try:
            speculative_config = (
                SpeculativeConfig(
                    method="ngram",
                    num_speculative_tokens=num_speculative_tokens,
                    prompt_lookup_min=1,
                    prompt_lookup_max=4,
                )
                if num_speculative_tokens
                else None
            )
            return VllmConfig(
                model_config=model_config,
                cache_config=cache_config,
                scheduler_config=scheduler_config,
                speculative_config=speculative_config,
            )
        except ValueError as e:
            raise VllmLayoutError(str(e)) from e


@contextlib.contextmanager
def _gpu_ssm_state_dtype():
    """This module reproduces vLLM's decision for a GPU deployment, but builds the config on the
    CPU platform, whose check rewrites a Mamba SSM state dtype other than float32 to float32 on
    machines with AVX512-BF16 (platforms/cpu.py) — doubling the states of bf16 models (Qwen3-Next)
    on some machines only. Answer that probe as a GPU deployment would never ask it."""
    import torch

    probe = torch.cpu._is_avx512_bf16_supported
    torch.cpu._is_avx512_bf16_supported = lambda: False
    try:
        yield
    finally:
        torch.cpu._is_avx512_bf16_supported = probe


def _gpu_attention_backend():
    from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend

    return TritonAttentionBackend


def _align_hybrid_block_size(vllm_config) -> None:
    from vllm.platforms.interface import Platform

    Platform._align_hybrid_block_size(vllm_config, _gpu_attention_backend())


def layer_specs(shapes: ModelShapes, vllm_config) -> dict[str, Any]:
    """One real vLLM KVCacheSpec per layer, as each layer's ``get_kv_cache_spec`` builds it."""
    import torch
    from vllm.model_executor.layers.attention.attention import _largest_kernel_block_within
    from vllm.model_executor.models import ModelRegistry
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum
    from vllm.v1.kv_cache_interface import (
        ChunkedLocalAttentionSpec,
        FullAttentionSpec,
        MambaSpec,
        SlidingWindowSpec,
    )

    dtype = getattr(torch, shapes.dtype)
    cache = vllm_config.cache_config
    block_size = cache.block_size
    specs: dict[str, Any] = {}
    mamba_spec = None
    if shapes.is_hybrid_state:
        model_cls, _ = ModelRegistry.resolve_model_cls(
            vllm_config.model_config.architecture, model_config=vllm_config.model_config
        )
        mamba_spec = MambaSpec(
            shapes=tuple(model_cls.get_mamba_state_shape_from_config(vllm_config)),
            dtypes=tuple(model_cls.get_mamba_state_dtype_from_config(vllm_config)),
            block_size=cache.mamba_block_size,
            page_size_padded=cache.mamba_page_size_padded,
            mamba_type=_mamba_type(shapes),
            mamba_cache_mode=cache.mamba_cache_mode,
            # MambaBase.get_kv_cache_spec: K speculative state blocks (none with ReplaySSM).
            num_speculative_blocks=0 if cache.use_replayssm else vllm_config.num_speculative_tokens,
        )
        if mamba_spec.mamba_type == MambaAttentionBackendEnum.MAMBA2:
            # MambaMixer2.get_kv_cache_spec: its forward pass exports prefill checkpoints.
            mamba_spec = dataclasses.replace(
                mamba_spec, num_prefill_checkpoint_blocks=1, prefill_checkpoint_alignment=1
            )
    for layer in shapes.layers:
        common = dict(num_kv_heads=layer.num_kv_heads, head_size=layer.head_dim, dtype=dtype)
        if layer.is_state:  # vLLM describes every state layer of a model with one MambaSpec
            specs[layer.name] = mamba_spec
        elif layer.kind == "full":
            specs[layer.name] = FullAttentionSpec(block_size=block_size, **common)
        elif layer.kind == "chunked_local":
            specs[layer.name] = ChunkedLocalAttentionSpec(
                block_size=block_size, attention_chunk_size=layer.chunk, **common
            )
        elif layer.kind == "sliding_window":
            probe = SlidingWindowSpec(block_size=1, sliding_window=layer.window, **common)
            per_token = probe.real_page_size_bytes
            sw_block = _largest_kernel_block_within(
                _gpu_attention_backend(), per_token, per_token * block_size, block_size, probe
            )
            specs[layer.name] = SlidingWindowSpec(
                block_size=sw_block, sliding_window=layer.window, **common
            )
        else:
            raise ValueError(f"layer {layer.name}: no vLLM spec for kind {layer.kind!r}")
    return specs


def _mamba_type(shapes: ModelShapes):
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    return {
        "jamba": MambaAttentionBackendEnum.MAMBA1,
        "nemotron_h": MambaAttentionBackendEnum.MAMBA2,
        "qwen3_next": MambaAttentionBackendEnum.GDN_ATTN,
        "qwen3_5_moe": MambaAttentionBackendEnum.GDN_ATTN,
    }.get(shapes.model_type, MambaAttentionBackendEnum.MAMBA2)


def vllm_layout(
    shapes: ModelShapes,
    kv_bytes: int,
    *,
    max_model_len: int,
    block_size: int = 16,
    hma: str = "default",
    enable_prefix_caching: bool = True,
    prefix_match_unit: int | None = None,
    specs_override: dict[str, Any] | None = None,
    num_speculative_tokens: int = 0,
) -> VllmLayout:
    """vLLM 0.32's own KV-cache layout for ``shapes`` under ``kv_bytes`` of KV memory.

    ``specs_override`` replaces the per-layer specs (tests use it to show the decision moves
    with the specs). Raises VllmLayoutError when vLLM refuses the configuration.
    """
    from vllm.v1.attention.backends.utils import (
        get_supported_kv_cache_layouts,
        record_kv_cache_layout,
        resolve_kv_cache_layout,
    )
    from vllm.v1.core.kv_cache_utils import (
        generate_scheduler_kv_cache_config,
        get_kv_cache_configs,
        get_max_concurrency_for_kv_cache_config,
        resolve_cache_hit_alignment_tokens,
        resolve_kv_cache_block_sizes,
    )
    from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs

    vllm_config = build_vllm_config(
        shapes,
        max_model_len=max_model_len,
        block_size=block_size,
        hma=hma,
        enable_prefix_caching=enable_prefix_caching,
        prefix_match_unit=prefix_match_unit,
        num_speculative_tokens=num_speculative_tokens,
    )
    if shapes.is_hybrid_state:
        _align_hybrid_block_size(vllm_config)
    specs = specs_override if specs_override is not None else layer_specs(shapes, vllm_config)
    with contextlib.suppress(AssertionError):  # already registered in this process
        register_all_kvcache_specs(vllm_config)
    # EngineCore resolves one layout from what the workers' backends support (core.py:296).
    supported = [
        layout.name for layout in get_supported_kv_cache_layouts([_gpu_attention_backend()])
    ]
    layout = resolve_kv_cache_layout(vllm_config, [supported], list(specs.values()))
    record_kv_cache_layout(vllm_config.cache_config, layout.name)
    try:
        worker_configs = get_kv_cache_configs(vllm_config, [dict(specs)], [kv_bytes])
    except (ValueError, NotImplementedError) as e:
        raise VllmLayoutError(str(e)) from e
    config = generate_scheduler_kv_cache_config(worker_configs)
    scheduler_block, hash_block = resolve_kv_cache_block_sizes(config, vllm_config)
    # As EngineCore does before it builds the scheduler (core.py).
    config.hash_block_size = hash_block
    config.cache_hit_alignment_tokens = resolve_cache_hit_alignment_tokens(
        config, vllm_config, scheduler_block, hash_block
    )
    groups = []
    for group in config.kv_cache_groups:
        spec = group.kv_cache_spec
        real = getattr(spec, "real_page_size_bytes", None)
        if real is None:  # MambaSpec: unpadded state bytes
            real = type(spec)(**{**_fields(spec), "page_size_padded": None}).page_size_bytes
        groups.append(
            GroupLayout(
                kind=type(spec).__name__,
                num_layers=len(group.layer_names),
                block_size=spec.block_size,
                page_bytes=spec.page_size_bytes,
                real_page_bytes=real,
                window=getattr(spec, "sliding_window", None),
                chunk=getattr(spec, "attention_chunk_size", None),
            )
        )
    worker = worker_configs[0]
    block_bytes = (
        worker.kv_cache_tensors[0].size // worker.num_blocks if worker.kv_cache_tensors else 0
    )
    return VllmLayout(
        hma=hma,
        hybrid_enabled=not vllm_config.scheduler_config.disable_hybrid_kv_cache_manager,
        vllm_config=vllm_config,
        kv_cache_config=config,
        groups=tuple(groups),
        num_blocks=config.num_blocks,
        block_bytes=block_bytes,
        scheduler_block_size=scheduler_block,
        hash_block_size=hash_block,
        max_concurrency=get_max_concurrency_for_kv_cache_config(vllm_config, config),
        max_model_len=vllm_config.model_config.max_model_len,
    )


def _fields(spec: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
