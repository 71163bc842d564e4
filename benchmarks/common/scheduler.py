"""A real vLLM Scheduler built from the workers' layer specs, as EngineCore builds it at start-up
(the plugin answers for a jenga config): what the replay and overhead benchmarks drive."""

from __future__ import annotations

from typing import Any


def scheduler_from_specs(vllm_config, specs: dict[str, Any], kv_bytes: int, backend):
    """EngineCore's start-up path from the workers' layer specs to a real Scheduler (and the
    request block hasher): layout, KV-cache configs (the plugin answers for a jenga config),
    capacity, block sizes. ``backend``: the attention backend class the workers would use."""
    import vllm.v1.engine.core as core
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.attention.backends.utils import (
        get_supported_kv_cache_layouts,
        record_kv_cache_layout,
        resolve_kv_cache_layout,
    )
    from vllm.v1.core.kv_cache_utils import (
        generate_scheduler_kv_cache_config,
        get_request_block_hasher,
        init_none_hash,
        resolve_kv_cache_block_sizes,
    )
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs
    from vllm.v1.structured_output import StructuredOutputManager

    try:
        register_all_kvcache_specs(vllm_config)
    except AssertionError:  # already registered in this process
        pass
    layouts = get_supported_kv_cache_layouts([backend])
    layout = resolve_kv_cache_layout(
        vllm_config, [[layout.name for layout in layouts]], list(specs.values())
    )
    record_kv_cache_layout(vllm_config.cache_config, layout.name)
    # core.* are the names the plugin patches: jenga configs for a jenga VllmConfig.
    configs = core.get_kv_cache_configs(vllm_config, [specs], [kv_bytes])
    config = generate_scheduler_kv_cache_config(configs)
    vllm_config.cache_config.num_gpu_blocks = config.num_blocks
    vllm_config.cache_config.block_size = min(
        g.kv_cache_spec.block_size for g in config.kv_cache_groups
    )
    core.update_kv_cache_capacity(vllm_config, config)
    block_size, hash_block_size = resolve_kv_cache_block_sizes(config, vllm_config)
    config.hash_block_size = hash_block_size
    scheduler_cls = vllm_config.scheduler_config.get_scheduler_cls()
    assert scheduler_cls is Scheduler, scheduler_cls  # the synchronous engine
    scheduler = Scheduler(
        vllm_config=vllm_config,
        kv_cache_config=config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=block_size,
        hash_block_size=hash_block_size,
        log_stats=True,
    )
    hash_fn = get_hash_fn_by_name(vllm_config.cache_config.prefix_caching_hash_algo)
    init_none_hash(hash_fn)
    return scheduler, get_request_block_hasher(hash_block_size, hash_fn)
