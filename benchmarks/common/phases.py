"""Where an engine step's CPU time goes: the phases of ``EngineCore.step`` and the KV-cache
manager's calls, timed around vLLM's own methods in an in-process engine."""

from __future__ import annotations

import time

# The KV-manager methods vLLM's Scheduler calls (v1/core/sched/scheduler.py), timed per call.
MANAGER_CALLS = (
    "get_computed_blocks",
    "allocate_slots",
    "free",
    "get_blocks",
    "get_block_ids",
    "cache_blocks",
    "remove_skipped_blocks",
    "take_new_block_ids",
    "take_events",
    "make_prefix_cache_stats",
    "record_prefix_cache_stats",
    "new_step_starts",
)


# The phases of EngineCore.step (v1/engine/core.py) the profile times, and what each includes.
PHASES = {
    "schedule": "Scheduler.schedule",
    "update": "Scheduler.update_from_output",
    "kv_manager": "the KV-cache manager's methods (inside schedule and update)",
    "execute": "model executor: execute_model + sample_tokens",
    "attention": "the attention op (CPUAttentionBackendImpl.forward, inside execute)",
    "step": "EngineCore.step_fn as a whole (the engine's step)",
}


class PhaseProfile:
    """In-process profile (the engine core runs in this process, VLLM_ENABLE_V1_MULTIPROCESSING=0):
    process CPU seconds (all threads: torch's intra-op pool included) spent in each phase of
    EngineCore.step. Phases nest (kv_manager in schedule/update, attention in execute), so each
    is timed on its own and the remainder is step minus schedule, update and execute."""

    def __init__(self, llm) -> None:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

        core = llm.llm_engine.engine_core.engine_core  # InprocClient -> EngineCore
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.depth = dict.fromkeys(PHASES, 0)
        self._wrap(core, "step_fn", "step")  # the bound step EngineCore picked at start-up
        self._wrap(core.scheduler, "schedule", "schedule")
        self._wrap(core.scheduler, "update_from_output", "update")
        for name in MANAGER_CALLS:
            if hasattr(core.scheduler.kv_cache_manager, name):
                self._wrap(core.scheduler.kv_cache_manager, name, "kv_manager")
        self._wrap(core.model_executor, "execute_model", "execute")
        self._wrap(core.model_executor, "sample_tokens", "execute")
        self._wrap(CPUAttentionBackendImpl, "forward", "attention", on_class=True)

    def _wrap(self, owner, name: str, phase: str, on_class: bool = False) -> None:
        method = getattr(owner, name)
        clock = time.process_time
        seconds, depth = self.seconds, self.depth

        def timed(*a, **kw):
            depth[phase] += 1
            t = clock()
            try:
                return method(*a, **kw)
            finally:
                depth[phase] -= 1
                if not depth[phase]:  # outermost call only (a wrapped method may recurse)
                    seconds[phase] += clock() - t

        setattr(owner, name, timed)

    def totals(self) -> dict[str, float]:
        out = dict(self.seconds)
        out["other"] = out["step"] - out["schedule"] - out["update"] - out["execute"]
        return out
