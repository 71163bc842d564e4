"""One ``vllm serve`` server per manager on 127.0.0.1, driven over the OpenAI API: its capacity
line, the peak running batch sampled from /metrics while every prompt runs at once, preemptions,
tokens/s and jenga's per-type series (``make demo``, ``benchmarks.zoo_capacity``)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from jenga_vllm.tools.server import VllmServer


@dataclass
class ServeRun:
    manager: str
    capacity_tokens: int
    max_concurrency: float
    peak_running: int
    preemptions: int
    tokens_per_s: float
    completion_tokens: int
    jenga_series: str  # the vllm:jenga_* samples of the last /metrics scrape ("" for stock)


def serve_and_measure(
    model_path: Path,
    manager: str,
    *,
    kv_bytes: int,
    prompts: list[str],
    max_tokens: int,
    max_model_len: int,
    prefix_caching: bool = True,
) -> ServeRun:
    """One server: capacity, then all prompts at once while /metrics is sampled."""
    extra = ("--max-num-seqs", "64") + (() if prefix_caching else ("--no-enable-prefix-caching",))
    with VllmServer(
        model_path,
        manager,
        kv_cache_memory_bytes=kv_bytes,
        max_model_len=max_model_len,
        extra_args=extra,
    ) as server:
        capacity, concurrency = server.capacity()
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, int(server.metrics().get("vllm:num_requests_running", 0)))
                except OSError:
                    pass
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.time()
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            results = list(pool.map(lambda p: server.complete(p, max_tokens), prompts))
        elapsed = time.time() - start
        done.set()
        sampler.join()
        bad = [body for status, body in results if status != 200]
        if bad:
            raise RuntimeError(f"{manager}: {len(bad)} requests failed, e.g. {bad[0]}")
        tokens = sum(body["usage"]["completion_tokens"] for _, body in results)
        preemptions = int(server.metrics().get("vllm:num_preemptions_total", 0))
        series = jenga_series(server.metrics_text())
    return ServeRun(
        manager, capacity, concurrency, peak, preemptions, tokens / elapsed, tokens, series
    )


def jenga_series(scrape: str) -> str:
    """The ``vllm:jenga_*`` samples of a /metrics scrape (no HELP/TYPE lines, no _created)."""
    return "\n".join(
        line
        for line in scrape.splitlines()
        if line.startswith("vllm:jenga_") and "_created{" not in line
    )
