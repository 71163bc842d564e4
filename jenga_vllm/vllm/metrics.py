"""Per-layer-type metrics of the jenga pool: Prometheus series, ``GET /jenga/stats``, a log line.

vLLM exports one ``kv_cache_usage_perc`` and one prefix-hit counter for all layer types together;
jenga knows, per type, what is used, cached, free, stranded and padded. The figures live in the
EngineCore process (the scheduler's ``JengaKVCacheManager``); Prometheus, the log line and HTTP
endpoints live in the API-server process. The path between them (docs/design.md §5):

- engine: ``attach_snapshot`` (a wrapper of ``Scheduler.make_stats``) puts the manager's
  ``stats_snapshot()`` — plain numbers — under the reserved key ``JENGA_KEY`` of
  ``SchedulerStats.kv_connector_stats``, the one ``SchedulerStats`` field that carries an
  arbitrary dict across vLLM's msgpack boundary. It is O(types + running requests) and is
  attached at most every ``JENGA_STATS_INTERVAL_S`` seconds (default 1) and whenever the
  scheduler is idle;
- frontend: ``strip_snapshot`` (a wrapper of ``StatLoggerManager.record``) removes the key before
  any of vLLM's loggers sees it (vLLM's connector loggers would choke on it) and leaves the
  payload on the decoded stats object as ``jenga_kv``; ``JengaStatLogger`` sets the series;
  ``log_types`` adds one line after vLLM's periodic "KV cache usage" line;
- ``GET /jenga/stats`` asks the EngineCore directly (a utility call to ``EngineCore.jenga_stats``,
  run between steps) for the same figures plus the layout.
Nothing here runs unless the engine asked for jenga.
"""

from __future__ import annotations

import os
import time
from typing import Any

from vllm.logger import init_logger

logger = init_logger(f"vllm.{__name__}")

JENGA_KEY = "__jenga__"
STATS_INTERVAL_S = float(os.environ.get("JENGA_STATS_INTERVAL_S", "1.0"))

# name, documentation, snapshot field — per layer type (label ``kv_cache_type``).
TYPE_GAUGES = (
    ("vllm:jenga_kv_used_bytes", "KV bytes in small pages running requests hold.", "used_bytes"),
    ("vllm:jenga_kv_cached_bytes", "KV bytes cached for prefix hits (evictable).", "cached_bytes"),
    (
        "vllm:jenga_kv_free_bytes",
        "Bytes of empty small pages inside large pages carved for the type.",
        "free_bytes",
    ),
    ("vllm:jenga_kv_used_pages", "Small pages running requests hold.", "used_pages"),
    (
        "vllm:jenga_kv_fragmentation_bytes",
        "Internal fragmentation: page padding, unfilled token slots, stranded empty slots.",
        "fragmentation_bytes",
    ),
)
TYPE_COUNTERS = (
    (
        "vllm:jenga_prefix_cache_hits",
        "Prefix-cache hit tokens the layer type alone could serve, at admission.",
        "prefix_cache_hit_tokens",
    ),
    ("vllm:jenga_evicted_pages", "Cached small pages evicted.", "evicted_pages"),
    (
        "vllm:jenga_released_pages",
        "Small pages running requests let go (out of window, superseded state).",
        "released_pages",
    ),
)
POOL_GAUGES = (
    ("vllm:jenga_kv_pool_bytes", "Bytes of the KV pool (every large page).", "pool_bytes"),
    (
        "vllm:jenga_large_page_bytes",
        "Bytes of one large page (the LCM of the small-page sizes).",
        "large_page_bytes",
    ),
    ("vllm:jenga_large_pages_free", "Large pages free (no layer type).", "large_pages_free"),
    (
        "vllm:jenga_large_pages",
        "Large pages in the pool (null page included).",
        "large_pages_total",
    ),
    (
        "vllm:jenga_null_page_bytes",
        "Bytes of the null page: a large page, or one small page when its other slots are lent.",
        "null_bytes",
    ),
)
POOL_COUNTERS = (
    (
        "vllm:jenga_prefix_cache_queries",
        "Prefix-cache tokens queried, at admission.",
        "prefix_cache_queries_tokens",
    ),
)


# ---- engine side ---------------------------------------------------------------------------
def attach_snapshot(scheduler: Any, stats: Any) -> None:
    """Put the jenga manager's figures into ``stats`` (a SchedulerStats), when due."""
    manager = scheduler.kv_cache_manager
    now = time.monotonic()
    idle = not scheduler.running and not scheduler.waiting
    last = getattr(manager, "_stats_sent_at", None)
    if last is not None and now - last < STATS_INTERVAL_S and not idle:
        return
    manager._stats_sent_at = now
    payload = dict(stats.kv_connector_stats or {})
    payload[JENGA_KEY] = manager.stats_snapshot()
    stats.kv_connector_stats = payload


def engine_stats(engine_core: Any) -> dict:
    """``EngineCore.jenga_stats``: the manager's figures now (a utility call, between steps)."""
    from jenga_vllm.vllm.manager import JengaKVCacheManager

    manager = engine_core.scheduler.kv_cache_manager
    if not isinstance(manager, JengaKVCacheManager):
        return {}
    return manager.stats_snapshot()


# ---- frontend side ---------------------------------------------------------------------------
LATEST: dict[int, dict] = {}  # engine index -> the last snapshot this API server received


def strip_snapshot(scheduler_stats: Any, engine_idx: int) -> None:
    """Take jenga's payload out of ``kv_connector_stats`` (vLLM's loggers must not see it)."""
    if scheduler_stats is None:
        return
    extra = scheduler_stats.kv_connector_stats
    if not extra or JENGA_KEY not in extra:
        return
    payload = extra.pop(JENGA_KEY)
    if not extra:
        scheduler_stats.kv_connector_stats = None
    scheduler_stats.jenga_kv = payload
    LATEST[engine_idx] = payload


def make_stat_logger(vllm_config: Any, engine_indexes: list[int]) -> Any:
    """The Prometheus logger of jenga's series (built after vLLM's own, which unregisters every
    ``vllm:`` collector when it is created)."""
    from prometheus_client import REGISTRY, Counter, Gauge
    from vllm.v1.metrics.loggers import AggregateStatLoggerBase

    class JengaStatLogger(AggregateStatLoggerBase):
        """Per layer type series with vLLM's labels (``model_name``, ``engine``)."""

        def __init__(self, vllm_config: Any, engine_indexes: list[int]) -> None:
            self.model_name = vllm_config.model_config.served_model_name
            self.engine_indexes = engine_indexes
            for collector in list(REGISTRY._collector_to_names):  # a rebuilt manager
                if getattr(collector, "_name", "").startswith("vllm:jenga_"):
                    REGISTRY.unregister(collector)
            labels = ["model_name", "engine", "kv_cache_type"]
            self.type_gauges = {
                field: Gauge(name, doc, labelnames=labels, multiprocess_mode="mostrecent")
                for name, doc, field in TYPE_GAUGES
            }
            self.type_counters = {
                field: Counter(name, doc, labelnames=labels) for name, doc, field in TYPE_COUNTERS
            }
            self.pool_gauges = {
                field: Gauge(name, doc, labelnames=labels[:2], multiprocess_mode="mostrecent")
                for name, doc, field in POOL_GAUGES
            }
            self.pool_counters = {
                field: Counter(name, doc, labelnames=labels[:2])
                for name, doc, field in POOL_COUNTERS
            }
            self.seen: dict[tuple, float] = {}  # cumulative values already counted

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            payload = getattr(scheduler_stats, "jenga_kv", None)
            if payload is None:
                return
            try:
                self._record(payload, str(engine_idx))
            except Exception:  # an exception here would stop vLLM's output loop
                logger.exception("jenga metrics: could not record a snapshot")

        def _record(self, payload: dict, engine: str) -> None:
            for type_name, figures in payload["types"].items():
                labels = (self.model_name, engine, type_name)
                for field, gauge in self.type_gauges.items():
                    gauge.labels(*labels).set(figures[field])
                for field, counter in self.type_counters.items():
                    self._count(counter, labels, field, figures[field])
            for field, gauge in self.pool_gauges.items():
                gauge.labels(self.model_name, engine).set(payload[field])
            for field, counter in self.pool_counters.items():
                self._count(counter, (self.model_name, engine), field, payload[field])

        def _count(self, counter: Any, labels: tuple, field: str, total: float) -> None:
            key = (field, *labels)
            child = counter.labels(*labels)  # the series exists (at 0) from the first snapshot
            delta = total - self.seen.get(key, 0)
            if delta > 0:
                child.inc(delta)
            self.seen[key] = total

        def log_engine_initialized(self) -> None:
            pass

    return JengaStatLogger(vllm_config, engine_indexes)


def type_line(payload: dict) -> str:
    """``full 1.2 MiB used / 3.4 MiB cached / 0.5 MiB free, mamba ...`` for the log line."""

    def mib(n: float) -> str:
        return f"{n / 2**20:.1f} MiB"

    return (
        ", ".join(
            f"{name} {mib(f['used_bytes'])} used / {mib(f['cached_bytes'])} cached / "
            f"{mib(f['free_bytes'])} free"
            for name, f in payload["types"].items()
        )
        + f"; {payload['large_pages_free']}/{payload['large_pages_total']} large pages free"
    )


def log_types(stat_logger: Any) -> None:
    """After vLLM's periodic line: the same engine's KV memory per layer type."""
    stats = getattr(stat_logger, "last_scheduler_stats", None)
    payload = getattr(stats, "jenga_kv", None)
    if payload is None:
        payload = LATEST.get(getattr(stat_logger, "engine_index", 0))
    if payload is None:
        return
    log_fn = logger.debug if getattr(stat_logger, "engine_is_idle", False) else logger.info
    log_fn("%sKV cache by layer type: %s", stat_logger.log_prefix, type_line(payload))


# ---- GET /jenga/stats ------------------------------------------------------------------------
def attach_route(app: Any) -> None:
    """Add ``GET /jenga/stats`` to the API server's app.

    A plain Starlette route (the handler gets the request positionally): FastAPI's parameter
    injection would read the postponed annotation as a query parameter named ``request``.
    """
    from starlette.responses import JSONResponse

    async def jenga_stats(request: Any) -> JSONResponse:
        engine_client = request.app.state.engine_client
        core = getattr(engine_client, "engine_core", None)
        if core is None or not hasattr(core, "call_utility_async"):
            return JSONResponse({"error": "no engine core to ask"}, status_code=503)
        payload = await core.call_utility_async("jenga_stats")
        return JSONResponse(payload)

    app.add_route("/jenga/stats", jenga_stats, methods=["GET"])
