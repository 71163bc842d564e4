"""vLLM's KV-cache events under jenga, read by a real ZMQ subscriber, against stock's stream.

Oracle: the same workload (a shared prefix, then a batch that outgrows the KV budget so cached
blocks are evicted) on the Gemma-3-like zoo model (sliding-window + full attention), once per
manager, each publishing to its own 127.0.0.1 port with ``--kv-events-config``. A subscriber
thread (bound there; vLLM's publisher connects) records every ``KVEventBatch``. Both streams must store the same block hashes per layer
type (kind + sliding window, as vLLM annotates them), each with the same parent chain, token ids
and block size; every removal must name a block stored before and not removed since (a page
jenga really had cached); the token ids generated stay equal.
"""

from __future__ import annotations

import fcntl
import gc
import socket
import threading
import time
from collections import Counter

import pytest

from tests.vllm.harness import ENGINE_LOCK, kv_budget

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Subscriber(threading.Thread):
    """Collects every event published on ``port`` (vLLM's wire format: topic, seq, msgpack)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVTIMEO, 200)
        # vLLM's publisher connects to a non-wildcard endpoint: the subscriber binds it, before
        # the engine starts, so no batch is published before the link is up.
        self.sock.bind(f"tcp://127.0.0.1:{port}")
        self.events: list = []
        self.seqs: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import msgspec
        import zmq
        from vllm.distributed.kv_events import KVEventBatch

        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        while not self.stop.is_set():
            try:
                _, seq, payload = self.sock.recv_multipart()
            except zmq.Again:
                continue
            self.seqs.append(int.from_bytes(seq, "big"))
            self.events.extend(decoder.decode(payload).events)

    def close(self) -> None:
        self.stop.set()
        self.join()
        self.sock.close(0)
        self.ctx.term()


def _run(manager: str) -> tuple[list, list[list[int]], int]:
    from vllm import SamplingParams
    from vllm.config import KVEventsConfig
    from vllm.inputs import TokensPrompt

    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo import build_model, word_token_ids

    port = _free_port()
    sub = Subscriber(port)
    sub.start()
    shared = word_token_ids(7, 200)
    batches = [
        [word_token_ids(100, 30, prefix=shared)],
        [word_token_ids(100 + i, 20 + 9 * i, prefix=shared) for i in range(1, 4)],
        [word_token_ids(200 + i, 180 + 16 * i) for i in range(6)],
    ]
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = LLM(
            str(build_model("gemma3")),
            kv_cache_manager=manager,
            kv_events_config=KVEventsConfig(
                enable_kv_cache_events=True,
                publisher="zmq",
                endpoint=f"tcp://127.0.0.1:{port}",
                topic="kv",
            ),
            dtype="float32",
            max_model_len=512,
            block_size=32,
            kv_cache_memory_bytes=kv_budget("gemma3"),
            enforce_eager=True,
            max_num_seqs=8,
            seed=0,
        )
        try:
            params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
            outputs = []
            for batch in batches:
                outs = llm.generate(
                    [TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False
                )
                outputs += [list(o.outputs[0].token_ids) for o in outs]
            time.sleep(1.0)  # the publisher thread sends the last step's batch
        finally:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
    sub.close()
    return sub.events, outputs, len(sub.seqs)


def _replay(events: list) -> dict:
    """Per (kind, window): stored hash → (parent, tokens, block size), or None where the event
    skipped blocks (stock's sparse sliding-window retention lists only the blocks it keeps, so
    its parent and token ids do not line up with them); every removal checked against the
    blocks stored and not yet removed."""
    from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

    stored: dict[tuple, dict] = {}
    live: Counter[tuple] = Counter()  # stock stores (and removes) a block computed twice twice
    removals = 0
    for event in events:
        if isinstance(event, BlockStored):
            kind = (event.kv_cache_spec_kind, event.kv_cache_spec_sliding_window)
            dense = len(event.token_ids) == len(event.block_hashes) * event.block_size
            parent = event.parent_block_hash
            for i, h in enumerate(event.block_hashes):
                size = event.block_size
                entry = (parent, tuple(event.token_ids[i * size : (i + 1) * size]), size)
                known = stored.setdefault(kind, {})
                if dense:
                    assert known.get(h) in (None, entry), "one hash, two different blocks"
                    known[h] = entry
                else:
                    known.setdefault(h, None)
                live[event.group_idx, h] += 1
                parent = h
        elif isinstance(event, BlockRemoved):
            assert len(event.block_hashes) == 1
            key = (event.group_idx, event.block_hashes[0])
            assert live[key] > 0, f"removal of a block not cached: {key}"
            live[key] -= 1
            removals += 1
        else:
            assert isinstance(event, AllBlocksCleared)
            live.clear()
    return {"stored": stored, "removals": removals}


FULL, WINDOW = ("full_attention", None), ("sliding_window", 64)


def test_kv_events_stream_matches_stock():
    stock_events, stock_out, stock_batches = _run("vllm")
    jenga_events, jenga_out, jenga_batches = _run("jenga")
    assert jenga_out == stock_out
    assert stock_batches > 0 and jenga_batches > 0
    stock, jenga = _replay(stock_events), _replay(jenga_events)
    assert set(jenga["stored"]) == set(stock["stored"]) == {FULL, WINDOW}
    # full attention: the same blocks, each with the same parent, tokens and size
    assert jenga["stored"][FULL] == stock["stored"][FULL]
    assert len(stock["stored"][FULL]) > 20
    # sliding window: stock keeps only the blocks its sparse retention can hit (the window's
    # tail at prompt ends); jenga indexes every window block (a shorter prefix can hit them,
    # docs/design.md §3), each with the chain full attention names for it
    assert set(stock["stored"][WINDOW]) < set(jenga["stored"][WINDOW])
    for h, entry in jenga["stored"][WINDOW].items():
        assert entry == jenga["stored"][FULL][h]
    # the batch outgrows the budget: both evicted cached blocks, and said so
    assert stock["removals"] > 0 and jenga["removals"] > 0
