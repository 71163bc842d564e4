"""jenga's vLLM 0.32 attention backend: vLLM's Triton metadata, jenga's paged kernels.

What it owns
    ``JengaAttentionBackend`` subclasses vLLM's ``TritonAttentionBackend`` and keeps its metadata
    builder unchanged (query_start_loc, seq_lens, block_table = unit ids of one layer type's small
    pages, slot_mapping = unit_id·N + row), so every worker-side path that knows the Triton
    backend treats it alike. Only the implementation differs: ``do_kv_cache_update`` calls
    ``jenga_vllm.kernels.kv_write`` and ``forward`` calls ``jenga_vllm.kernels.paged_attention``,
    one launch per layer for the whole mixed prefill/decode batch, reading K/V through the layer's
    ``[num_units, H, N, 2·head_size]`` view of the shared pool (docs/design.md §3).

Registration (``register_jenga_attention_backend``, per process; vLLM resolves backends in the
worker process, so it must run there — the general plugin's ``register()`` runs everywhere)
    CUDA   ``AttentionBackendEnum.CUSTOM`` → this backend. It is used when
           ``attention_config.backend`` is ``CUSTOM`` (``--attention-backend CUSTOM``);
           ``jenga_attention_backend_choice`` tells the plugin whether to make that the default
           for ``--kv-cache-manager jenga`` (``JENGA_ATTENTION_BACKEND=vllm`` keeps vLLM's).
    CPU    only with ``JENGA_ATTENTION_BACKEND=triton``: ``CPU_ATTN`` is overridden, because the CPU
           platform always returns ``CPU_ATTN``. Kernels then run in Triton's interpreter
           (``TRITON_INTERPRET=1``): tests only, far too slow to serve.

Not supported (raises at construction or first use, never silently wrong): FP8/INT8/INT4 KV cache,
ALiBi, multimodal prefix ranges, R-SWA, per-sequence causal flags, chunk lookback, fused output
quantization, encoder-only attention, head_size_v != head_size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from vllm.config.cache import CacheDType
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.v1.attention.backend import AttentionLayer, AttentionType
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
from vllm.v1.attention.backends.triton_attn import (
    TritonAttentionBackend,
    TritonAttentionImpl,
    TritonAttentionMetadata,
    TritonAttentionMetadataBuilder,
)

from jenga_vllm.kernels import MAX_SPLITS, SplitWorkspace, kv_write, paged_attention
from jenga_vllm.vllm.attention import BACKEND_PATH

logger = init_logger(__name__)

BACKEND_ENV = "JENGA_ATTENTION_BACKEND"  # "triton": use jenga's kernels; "vllm": vLLM's backends


@dataclass
class JengaAttentionMetadata(TritonAttentionMetadata):
    """vLLM's Triton metadata plus the kernels' pre-allocated split-key scratch."""

    split_workspace: SplitWorkspace | None = None


class JengaAttentionMetadataBuilder(TritonAttentionMetadataBuilder):
    """vLLM's Triton metadata builder: its tensors are exactly what the kernels read.

    Adds one ``SplitWorkspace`` per builder (per layer group), sized for the decode batches that
    ``choose_config`` splits (fewer sequences than SMs per kv head) and this group's own head
    size, so split-key decode allocates nothing per step or inside a CUDA graph.
    """

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.split_workspace: SplitWorkspace | None = None
        if torch.device(device).type == "cuda":
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            rows = -(-sms // max(1, kv_cache_spec.num_kv_heads))
            heads = self.num_heads_q
            pad = 1 << (kv_cache_spec.head_size - 1).bit_length()
            f32 = dict(dtype=torch.float32, device=device)
            self.split_workspace = SplitWorkspace(
                out=torch.empty(rows, heads, MAX_SPLITS, pad, **f32),
                max=torch.empty(rows, heads, MAX_SPLITS, **f32),
                sum=torch.empty(rows, heads, MAX_SPLITS, **f32),
            )

    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False):
        base = super().build(common_prefix_len, common_attn_metadata, fast_build)
        values = {f.name: getattr(base, f.name) for f in fields(base)}
        return JengaAttentionMetadata(**values, split_workspace=self.split_workspace)


class JengaAttentionImpl(TritonAttentionImpl):
    """Writes and reads K/V with jenga's kernels; the constructor is the Triton backend's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.kv_cache_dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise NotImplementedError(
                f"jenga attention: kv_cache_dtype {self.kv_cache_dtype!r} is not supported; use "
                f"'auto' or set {BACKEND_ENV}=vllm to run vLLM's own backend"
            )
        if self.alibi_slopes is not None or self.chunk_lookback > -1:
            raise NotImplementedError(
                f"jenga attention: ALiBi and chunk lookback are not supported; set {BACKEND_ENV}=vllm"
            )
        if self.attn_type not in (AttentionType.DECODER, AttentionType.ENCODER_DECODER):
            raise NotImplementedError(
                f"jenga attention: attention type {self.attn_type} is not supported"
            )
        left = self.sliding_window[0]
        self.window = left + 1 if left >= 0 else 0

    def fused_output_quant_supported(self, quant_key) -> bool:
        return False

    def fused_rope_kvcache_supported(self) -> bool:
        return False

    def forward(
        self,
        layer: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: JengaAttentionMetadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query ``[T, Hq, d]``, kv_cache ``[num_units, H, N, 2d]``, output ``[T, Hq, d]``."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("jenga attention: fused output quantization")
        if attn_metadata is None:  # profiling run
            return output.fill_(0)
        causal = attn_metadata.causal
        if isinstance(causal, torch.Tensor):
            raise NotImplementedError("jenga attention: per-sequence causal flags")
        if (
            attn_metadata.mm_prefix_range_tensor is not None
            or attn_metadata.rswa_prefix_lens is not None
        ):
            raise NotImplementedError("jenga attention: multimodal prefix ranges / R-SWA")
        num_tokens = attn_metadata.num_actual_tokens
        paged_attention(
            query[:num_tokens],
            kv_cache,
            attn_metadata.block_table,
            attn_metadata.query_start_loc,
            attn_metadata.seq_lens,
            self.scale,
            max_query_len=attn_metadata.max_query_len,
            out=output[:num_tokens],
            causal=bool(causal),
            window=self.window,
            softcap=float(self.logits_soft_cap or 0.0),
            sinks=self.sinks,
            workspace=getattr(attn_metadata, "split_workspace", None),
        )
        return output

    def do_kv_cache_update(
        self,
        layer: AttentionLayer,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Scatter ``key``/``value`` ``[T, H, d]`` into this layer's pages at ``slot_mapping``."""
        kv_write(key, value, kv_cache, slot_mapping)


class JengaAttentionBackend(TritonAttentionBackend):
    """vLLM's Triton backend with jenga's kernels (see the module docstring)."""

    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list[CacheDType]] = ["auto", "float16", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        # Attention layers look their backend up as AttentionBackendEnum[get_name()].
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[JengaAttentionImpl]:
        return JengaAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[JengaAttentionMetadataBuilder]:
        return JengaAttentionMetadataBuilder

    @classmethod
    def customize_spec(cls, spec):
        return spec  # plain K/V rows: no packed per-token-head scales

    @classmethod
    def supports_head_size(cls, head_size: int) -> bool:
        return 16 <= head_size <= 256

    @classmethod
    def supports_non_causal(cls) -> bool:
        return False

    @classmethod
    def supports_rswa(cls) -> bool:
        return False

    @classmethod
    def supports_batch_invariance(cls) -> bool:
        return False

    @classmethod
    def supports_mm_prefix(cls) -> bool:
        return False

    @classmethod
    def supports_alibi_sqrt(cls) -> bool:
        return False

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type in (AttentionType.DECODER, AttentionType.ENCODER_DECODER)


def jenga_attention_backend_choice() -> str:
    """``"triton"`` (jenga's kernels), ``"vllm"`` (vLLM's backends) or ``"default"`` (unset)."""
    choice = os.environ.get(BACKEND_ENV, "default").strip().lower() or "default"
    if choice not in ("triton", "vllm", "default"):
        raise ValueError(f"{BACKEND_ENV}={choice!r}: choose 'triton' or 'vllm'")
    return choice


def register_jenga_attention_backend() -> AttentionBackendEnum | None:
    """Register jenga's backend with vLLM's registry in this process; idempotent.

    Returns the enum member now pointing at it (``CUSTOM`` on CUDA, ``CPU_ATTN`` on CPU when
    ``JENGA_ATTENTION_BACKEND=triton``), or ``None`` when nothing was registered.
    """
    choice = jenga_attention_backend_choice()
    if current_platform.is_cuda_alike():
        register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
        logger.debug("jenga attention backend registered as CUSTOM")
        return AttentionBackendEnum.CUSTOM
    if current_platform.is_cpu() and choice == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"{BACKEND_ENV}=triton on CPU runs the Triton kernels in the interpreter: also set "
                "TRITON_INTERPRET=1 (before vLLM starts), or unset "
                f"{BACKEND_ENV} to use vLLM's CPU attention"
            )
        register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
        register_backend(AttentionBackendEnum.CPU_ATTN, BACKEND_PATH)
        logger.warning(
            "jenga attention backend replaces CPU_ATTN (Triton interpreter): for tests only"
        )
        return AttentionBackendEnum.CPU_ATTN
    return None


def unregister_jenga_attention_backend() -> None:
    """Undo ``register_jenga_attention_backend`` in this process (tests)."""
    for member in (AttentionBackendEnum.CUSTOM, AttentionBackendEnum.CPU_ATTN):
        if member.is_overridden() and member.get_path() == BACKEND_PATH:
            member.clear_override()
