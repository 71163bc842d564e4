"""Per-layer-type metrics on a real ``vllm serve`` (127.0.0.1): /metrics, GET /jenga/stats, log.

One jenga server per model — the Gemma-3-like zoo model (sliding window 64 + full) and the
Granite-4-like Mamba-2 hybrid with prefix caching on — runs a prefix-sharing workload; then the
series must agree with the manager's own figures (GET /jenga/stats asks the EngineCore between
steps; snapshots are attached every step here, JENGA_STATS_INTERVAL_S=0), add up to the pool,
show hits per type where vLLM's aggregate counts hits, read zero used once every request ended,
and zero cached after a prefix-cache reset. A stock server shows no jenga series at all.
"""

from __future__ import annotations

import fcntl
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from jenga_vllm.tools.server import VllmServer
from jenga_vllm.tools.zoo import build_model, word_token_ids, words
from jenga_vllm.vllm import metrics
from tests.vllm.harness import ENGINE_LOCK

pytestmark = pytest.mark.e2e
ENV = {"JENGA_STATS_INTERVAL_S": "0", "VLLM_LOG_STATS_INTERVAL": "1"}
BUDGET = {"gemma3": 4_000_000, "granite_hybrid": 4_000_000}
TYPE_SERIES = [name for name, _, _ in metrics.TYPE_GAUGES + metrics.TYPE_COUNTERS]


def adds_up(stats: dict) -> bool:
    """Per-type used + cached + free-in-open-large-pages + free large pages + null page = pool
    (the null page is one small page when its other slots are lent: core/layout.py)."""
    accounted = sum(
        f["used_bytes"] + f["cached_bytes"] + f["free_bytes"] for f in stats["types"].values()
    )
    free_large = stats["large_pages_free"] * stats["large_page_bytes"]
    return accounted + free_large + stats["null_bytes"] == stats["pool_bytes"]


def series_add_up(samples: list) -> bool:
    """``adds_up`` on one /metrics scrape (the logger sets every series from one snapshot
    within one event-loop callback, and the scrape runs in the same loop)."""
    pool = {
        n: v
        for n, labels, v in samples
        if n.startswith("vllm:jenga_") and "kv_cache_type" not in labels
    }
    accounted = sum(
        v
        for n, labels, v in samples
        if "kv_cache_type" in labels
        and n
        in ("vllm:jenga_kv_used_bytes", "vllm:jenga_kv_cached_bytes", "vllm:jenga_kv_free_bytes")
    )
    large = pool["vllm:jenga_large_page_bytes"]
    return (
        accounted + pool["vllm:jenga_large_pages_free"] * large + pool["vllm:jenga_null_page_bytes"]
        == pool["vllm:jenga_kv_pool_bytes"]
    )


def run_workload(server: VllmServer) -> list[tuple[dict, list]]:
    """Runs the prefix-sharing requests; returns the (/jenga/stats, /metrics samples) read
    while they ran."""
    shared = word_token_ids(3, 100)
    prompts = [words(word_token_ids(40 + i, 20 + 9 * i, prefix=shared)) for i in range(5)]
    status, body = server.complete(prompts[0], 8)
    assert status == 200, body
    during = []
    for batch in (prompts[1:3], prompts[3:]):  # the second batch starts from the junction state
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(server.complete, p, 48) for p in batch]
            while not all(f.done() for f in futures):
                during.append((server.get("/jenga/stats")[1], server.metric_samples()))
                time.sleep(0.05)
        results = [f.result() for f in futures]
        assert all(status == 200 for status, _ in results), results
    return during


def by_type(server: VllmServer) -> dict[str, dict[str, float]]:
    """{kv_cache_type: {series: value}} of the jenga series (counters as their _total)."""
    out: dict[str, dict[str, float]] = {}
    for name, labels, value in server.metric_samples():
        jenga = name.startswith("vllm:jenga_") and not name.endswith("_created")
        if jenga and "kv_cache_type" in labels:
            out.setdefault(labels["kv_cache_type"], {})[name.removesuffix("_total")] = value
    return out


@pytest.fixture(scope="module")
def engine_lock():
    """One lock for the module: a parametrized server outlives its last test (pytest tears it
    down at the module's end), so a second ``flock`` from this process would wait forever."""
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module", params=["gemma3", "granite_hybrid"])
def served(request, engine_lock):
    model = request.param
    with VllmServer(
        build_model(model), "jenga", kv_cache_memory_bytes=BUDGET[model], env=ENV
    ) as srv:
        during = run_workload(srv)
        yield model, srv, during


def test_stock_server_has_no_jenga_series_and_no_endpoint(engine_lock):
    # First in the file: it runs before the jenga servers start (one engine at a time).
    with VllmServer(
        build_model("gemma3"), "vllm", kv_cache_memory_bytes=BUDGET["gemma3"], env=ENV
    ) as server:
        status, body = server.complete(words(word_token_ids(5, 40)), 4)
        assert status == 200, body
        assert not [n for n, _, _ in server.metric_samples() if "jenga" in n]
        assert server.get("/jenga/stats")[0] == 404
        assert "KV cache by layer type" not in server.log_text()


def test_figures_add_up_to_the_pool_while_requests_run(served):
    model, _, during = served
    assert during, "no /jenga/stats read while requests ran"
    assert all(adds_up(stats) for stats, _ in during)
    assert all(series_add_up(samples) for _, samples in during)
    assert any(f["used_bytes"] > 0 for stats, _ in during for f in stats["types"].values()), model
    used_series = [
        v for _, samples in during for n, _, v in samples if n == "vllm:jenga_kv_used_bytes"
    ]
    assert any(v > 0 for v in used_series), model


def test_series_agree_with_the_managers_figures_and_add_up_to_the_pool(served):
    model, server, _ = served
    status, stats = server.get("/jenga/stats")
    assert status == 200, stats
    series = by_type(server)
    assert set(series) == set(stats["types"]) == set(stats["layout"]["types"])
    for name, figures in stats["types"].items():
        assert set(series[name]) == set(TYPE_SERIES), name
        for metric, _, field in metrics.TYPE_GAUGES:
            assert series[name][metric] == figures[field], (name, metric)
    assert adds_up(stats)
    assert series_add_up(server.metric_samples())
    assert stats["large_pages_total"] == stats["pool_bytes"] // stats["large_page_bytes"]
    aggregate = server.metrics()
    assert aggregate["vllm:prefix_cache_hits_total"] > 0
    for name in stats["types"]:
        assert series[name]["vllm:jenga_prefix_cache_hits"] > 0, f"{model}: no hits for {name}"
    if model == "granite_hybrid":
        assert any(f["kind"] == "mamba" for f in stats["types"].values())


def test_used_reads_zero_when_idle_and_cached_zero_after_a_reset(served):
    _, server, _ = served
    _, stats = server.get("/jenga/stats")
    assert all(f["used_bytes"] == 0 and f["used_pages"] == 0 for f in stats["types"].values())
    assert any(f["cached_bytes"] > 0 for f in stats["types"].values())
    assert server.reset_prefix_cache()
    _, stats = server.get("/jenga/stats")
    assert all(f["cached_bytes"] == 0 for f in stats["types"].values())
    assert stats["large_pages_free"] == stats["large_pages_total"] - 1  # all but the null page


def test_the_periodic_log_line_breaks_kv_usage_down_by_type(served):
    _, server, _ = served
    deadline = time.time() + 30
    while "KV cache by layer type:" not in server.log_text() and time.time() < deadline:
        server.complete(words(word_token_ids(77, 10)), 2)  # a step makes the line due
        time.sleep(1.5)
    line = next(x for x in server.log_text().splitlines() if "KV cache by layer type:" in x)
    assert "used /" in line and "large pages free" in line
