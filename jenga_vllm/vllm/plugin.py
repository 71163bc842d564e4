"""vLLM general plugin: the one place where jenga_vllm patches vLLM 0.32.

What it owns
    ``register()`` is the ``vllm.general_plugins`` entry point: vLLM calls it in every process
    (frontend, EngineCore, workers) before it builds anything. It calls ``install()``, which
    applies the patches in ``PATCHES`` once per process (idempotent). Every patch decides at call
    time: with ``additional_config["kv_cache_manager"] != "jenga"`` (the default, ``vllm``) the
    stock function runs untouched, so installing the plugin changes nothing until it is asked for.

Patch ledger (symbol → replacement; guard; upstream hook that would remove it; checked: 0.32.0)
    EngineArgs.add_cli_args       adds ``--kv-cache-manager {vllm,jenga}``; always (a flag);
                                  would go with a plugin CLI-args hook.
    EngineArgs.from_cli_args      folds the flag into ``additional_config``; flag != default;
                                  same hook.
    EngineArgs.create_engine_config
                                  validates the choice and rejects unsupported combinations
                                  (KV connectors, KV events, speculative decoding, PP/DCP,
                                  --prefix-match-unit) with one clear error; keeps vLLM's hybrid
                                  manager on for chunked-local models; jenga requested.
    vllm.v1.engine.core.get_kv_cache_configs
                                  → kv_config.build_kv_cache_configs (jenga layout, unit ids);
                                  jenga requested; would go with a KV-layout plugin hook.
    vllm.v1.engine.core.update_kv_cache_capacity
                                  → kv_config.update_capacity (same log line); config is a
                                  JengaKVCacheConfig.
    vllm.v1.core.sched.scheduler.KVCacheManager
                                  → a factory returning JengaKVCacheManager for a
                                  JengaKVCacheConfig (works for Scheduler and AsyncScheduler);
                                  would go with a kv-cache-manager class option.
    Platform._align_hybrid_block_size
                                  skipped: vLLM's worker inflates attention blocks to the Mamba
                                  state size and pads states to that page; jenga pages each
                                  type at its own size; jenga requested; would go with a
                                  KV-layout plugin hook.
    GPUModelRunner._init_kv_zero_meta (V1 runner, also the CPU runner's; and the V2 runner's)
                                  → jenga_vllm.vllm.worker.UnitZeroer (clears the units of new small
                                  pages); config is a JengaKVCacheConfig; applied when the
                                  runner module is first imported (it is heavy), same hook.
    vllm.v1.attention.backends.registry (register_backend)
                                  CUDA: AttentionBackendEnum.CUSTOM → jenga's Triton backend
                                  (jenga_vllm/vllm/attention), made the default of jenga runs in
                                  create_engine_config; CPU: replaces CPU_ATTN only with
                                  JENGA_ATTENTION_BACKEND=triton (interpreter mode, tests).
On an unsupported vLLM version only the create_engine_config guard is installed: asking for jenga
then fails with the supported versions in the message, and stock vLLM keeps working.
"""

from __future__ import annotations

import argparse
import importlib.abc
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jenga_vllm.core.errors import JengaConfigError, JengaUnsupportedError

SUPPORTED_VLLM = ("0.32.",)
MANAGER_KEY = "kv_cache_manager"
CHOICES = ("vllm", "jenga")
FLAG_HELP = (
    "KV-cache block manager: 'vllm' (default, stock) or 'jenga' (Jenga's two-level LCM page "
    "allocator with per-layer-type policies, from the jenga_vllm plugin)."
)


@dataclass(frozen=True)
class Patch:
    module: str
    attribute: str  # "Class.method" or a module-level name
    make: Callable[[Any], Any]  # original -> replacement
    why: str


_installed: dict[str, Any] = {}  # "module:attribute" -> original
_supported: bool | None = None


def manager_choice(additional_config: dict | None) -> str:
    """The manager asked for in ``additional_config``; raises for an unknown name."""
    choice = (additional_config or {}).get(MANAGER_KEY, "vllm")
    if choice not in CHOICES:
        raise JengaConfigError(
            f"invalid kv_cache_manager {choice!r} (choose from {', '.join(map(repr, CHOICES))})"
        )
    return choice


def is_jenga_enabled(vllm_config: Any) -> bool:
    return manager_choice(getattr(vllm_config, "additional_config", None)) == "jenga"


# ---- CLI -------------------------------------------------------------------------------------
def _add_cli_args(original: Callable) -> Callable:
    def add_cli_args(parser, *args, **kwargs):
        parser = original(parser, *args, **kwargs)
        try:
            parser.add_argument(
                "--kv-cache-manager",
                choices=list(CHOICES),
                default="vllm",
                help=FLAG_HELP,
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
            merged = dict(engine_args.additional_config or {})
            merged[MANAGER_KEY] = choice
            engine_args.additional_config = merged
        return engine_args

    return classmethod(from_cli_args)


# ---- config validation ---------------------------------------------------------------------
def validate_engine_args(engine_args: Any) -> None:
    """Reject what jenga cannot serve, before any process starts; one message, with the fix."""
    additional = engine_args.additional_config
    if isinstance(additional, str):  # vLLM parses JSON strings later; read them here too
        import json

        additional = json.loads(additional)
    if manager_choice(additional) != "jenga":
        return
    if not _supported:
        import vllm

        raise JengaUnsupportedError(
            f"jenga_vllm supports vLLM {', '.join(v + 'x' for v in SUPPORTED_VLLM)}, found "
            f"{vllm.__version__}; install a supported vLLM or use --kv-cache-manager vllm"
        )
    unsupported = {
        "kv_transfer_config": "KV connectors / offloading (--kv-transfer-config)",
        "kv_events_config": "KV cache events (--kv-events-config)",
        "speculative_config": "speculative decoding (--speculative-config)",
        "prefix_match_unit": "--prefix-match-unit",
    }
    for field, what in unsupported.items():
        if getattr(engine_args, field, None):
            raise JengaUnsupportedError(
                f"--kv-cache-manager jenga does not support {what} yet; remove it or use "
                "--kv-cache-manager vllm"
            )
    for field in ("pipeline_parallel_size", "decode_context_parallel_size"):
        if (getattr(engine_args, field, 1) or 1) > 1:
            raise JengaUnsupportedError(
                f"--kv-cache-manager jenga does not support {field} > 1 yet; use 1 or "
                "--kv-cache-manager vllm"
            )


def validate_model(vllm_config: Any) -> None:
    """Reject model kinds the jenga adapter does not serve yet, before any engine process starts."""
    model_config = vllm_config.model_config
    if model_config.is_attention_free:
        raise JengaUnsupportedError(
            f"{model_config.model} is an attention-free model: it has no KV cache for jenga to "
            "manage. Serve it with --kv-cache-manager vllm"
        )
    if model_config.is_encoder_decoder and vllm_config.cache_config.enable_prefix_caching:
        # vLLM turns prefix caching off for these by default; asked for explicitly, stock 0.32
        # crashes at the first request (CrossAttentionManager has no cache lookup), and a
        # decoder-token hit would reuse K/V computed against another request's encoder input.
        raise JengaUnsupportedError(
            f"{model_config.model} is an encoder-decoder model, which vLLM serves without "
            "prefix caching; drop --enable-prefix-caching (or pass --no-enable-prefix-caching)"
        )
    if model_config.has_inner_state and vllm_config.cache_config.mamba_cache_mode != "none":
        raise JengaUnsupportedError(
            f"{model_config.model} is a Mamba/linear-attention hybrid and prefix caching is on "
            f"(Mamba cache mode {vllm_config.cache_config.mamba_cache_mode!r}); jenga serves "
            "Mamba hybrids with one state page per request so far: pass "
            "--no-enable-prefix-caching (enable_prefix_caching=False), or use "
            "--kv-cache-manager vllm"
        )


def _create_engine_config(original: Callable) -> Callable:
    def create_engine_config(self, *args, **kwargs):
        validate_engine_args(self)
        is_jenga = manager_choice(_as_dict(self.additional_config)) == "jenga"
        if is_jenga:
            # vLLM turns its hybrid manager off for chunked-local models by default; jenga keeps
            # every layer type's own policy, so keep the chunked specs intact.
            os.environ.setdefault("VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE", "1")
        vllm_config = original(self, *args, **kwargs)
        if is_jenga:
            validate_model(vllm_config)
            from jenga_vllm.vllm.attention import apply_jenga_attention_default

            # CUDA: jenga's Triton kernels read the heterogeneous page tables by default
            # (JENGA_ATTENTION_BACKEND=vllm or --attention-backend keeps vLLM's backends).
            apply_jenga_attention_default(vllm_config)
        return vllm_config

    return create_engine_config


def _as_dict(value: Any) -> dict | None:
    if isinstance(value, str):
        import json

        return json.loads(value)
    return value


# ---- EngineCore ------------------------------------------------------------------------------
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
        if is_jenga_enabled(vllm_config):
            return None  # keep the user's block size and exact (unpadded) state pages
        return func(cls, vllm_config, backend_cls)

    return classmethod(align_hybrid_block_size)


def _init_kv_zero_meta(attribute: str) -> Callable[[Callable], Callable]:
    """Replacement of a model runner's ``_init_kv_zero_meta``; the runner keeps its zeroer in
    ``attribute`` (V1 and V2 runners name it differently)."""

    def make(original: Callable) -> Callable:
        def init_kv_zero_meta(self) -> None:
            from jenga_vllm.vllm.kv_config import JengaKVCacheConfig

            if not isinstance(self.kv_cache_config, JengaKVCacheConfig):
                return original(self)
            from jenga_vllm.vllm.worker import UnitZeroer

            setattr(self, attribute, UnitZeroer.for_runner(self))
            return None

        return init_kv_zero_meta

    return make


PATCHES: tuple[Patch, ...] = (
    Patch("vllm.engine.arg_utils", "EngineArgs.add_cli_args", _add_cli_args, "--kv-cache-manager"),
    Patch("vllm.engine.arg_utils", "EngineArgs.from_cli_args", _from_cli_args, "fold the flag"),
    Patch(
        "vllm.engine.arg_utils",
        "EngineArgs.create_engine_config",
        _create_engine_config,
        "validate",
    ),
    Patch("vllm.v1.engine.core", "get_kv_cache_configs", _get_kv_cache_configs, "jenga layout"),
    Patch(
        "vllm.v1.engine.core",
        "update_kv_cache_capacity",
        _update_kv_cache_capacity,
        "capacity line",
    ),
    Patch("vllm.v1.core.sched.scheduler", "KVCacheManager", _kv_cache_manager, "jenga manager"),
    Patch(
        "vllm.platforms.interface",
        "Platform._align_hybrid_block_size",
        _align_hybrid_block_size,
        "no Mamba block inflation",
    ),
    Patch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner._init_kv_zero_meta",
        _init_kv_zero_meta("_kv_block_zeroer"),
        "unit zeroer",
    ),
    Patch(
        "vllm.v1.worker.gpu.model_runner",
        "GPUModelRunner._init_kv_zero_meta",
        _init_kv_zero_meta("kv_block_zeroer"),
        "unit zeroer (V2 runner)",
    ),
)
GUARD_ONLY = ("EngineArgs.create_engine_config",)
# Modules too heavy to import in every process (the API server never needs them): their patches
# are applied right after the module's first import.
ON_IMPORT = ("vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.gpu.model_runner")


def _apply(patch: Patch) -> None:
    import importlib

    key = f"{patch.module}:{patch.attribute}"
    if key in _installed:
        return
    module = importlib.import_module(patch.module)
    owner: Any = module
    *path, name = patch.attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, patch.make(original))
    _installed[key] = original


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Applies patches of a module right after its first import (a post-import hook)."""

    def __init__(self) -> None:
        self.pending: dict[str, list[Patch]] = {}

    def find_spec(self, fullname, path, target=None):
        patches = self.pending.get(fullname)
        if patches is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None:
            return spec
        del self.pending[fullname]
        exec_module = spec.loader.exec_module

        def exec_then_patch(module) -> None:
            exec_module(module)
            for patch in patches:
                _apply(patch)

        spec.loader.exec_module = exec_then_patch  # type: ignore[method-assign]
        return spec


_on_import = _PatchOnImport()


def _apply_when_imported(patch: Patch) -> None:
    if patch.module in sys.modules:
        _apply(patch)
        return
    _on_import.pending.setdefault(patch.module, []).append(patch)
    if _on_import not in sys.meta_path:
        sys.meta_path.insert(0, _on_import)


def install() -> list[str]:
    """Apply every patch once in this process (those of ON_IMPORT modules when the module is
    first imported); returns the installed patch keys."""
    global _supported
    import vllm

    if _supported is None:
        _supported = vllm.__version__.startswith(SUPPORTED_VLLM)
    for patch in PATCHES:
        if patch.module in ON_IMPORT:
            if _supported and f"{patch.module}:{patch.attribute}" not in _installed:
                _apply_when_imported(patch)
        elif _supported or patch.attribute in GUARD_ONLY:
            _apply(patch)
    if _supported:
        from jenga_vllm.vllm.attention import register_jenga_attention_backend

        # Worker side: vLLM picks attention backends in the worker process. CUDA: registers
        # AttentionBackendEnum.CUSTOM (used only when selected); CPU: only with
        # JENGA_ATTENTION_BACKEND=triton (interpreter mode, tests).
        register_jenga_attention_backend()
    return sorted(_installed)


def installed() -> list[str]:
    return sorted(_installed)


def register() -> None:
    """``vllm.general_plugins`` entry point (called by vLLM in every process)."""
    keys = install()
    if not _supported:
        import logging

        import vllm

        logging.getLogger(__name__).error(
            "jenga_vllm supports vLLM %s, found %s: --kv-cache-manager jenga is unavailable",
            "/".join(v + "x" for v in SUPPORTED_VLLM),
            vllm.__version__,
        )
    assert keys
