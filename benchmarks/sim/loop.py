"""The simulated scheduler, identical for every peer.

FCFS; each step every running request decodes ``decode_stride`` tokens (one block; memory is
managed at block granularity so this only coarsens time), then waiting requests are admitted
while their prompt fits (prefill ≤ ``PREFILL_BUDGET`` tokens per step). When a running request
cannot grow, the newest running request is preempted (freed, re-queued, recomputed later). A
request may not start from a Mamba state cached in the current engine step (the engine is still
writing it; vLLM's MambaManager refuses, and so does jenga's core): admission stops and resumes
one engine step later. A simulated step stands for ``decode_stride`` engine steps, so up to
``decode_stride - 1`` such waits fit in one. A request's prefix hit is counted once, at its first
admission, capped at what its first try found. Requests wait from their ``arrival`` step or, in
a session, until the previous turn finishes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from benchmarks.sim.config import BLOCK_SIZE, DECODE_STRIDE, PREFILL_BUDGET
from benchmarks.sim.managers import Manager, Running
from benchmarks.sim.oracle import ExactNeed
from benchmarks.sim.workloads import TraceRequest
from jenga_vllm.tools.model_shapes import ModelShapes


@dataclass
class RunResult:
    manager: str
    max_running: int = 0
    avg_util: float = 0.0
    peak_util: float = 0.0
    hit_tokens: int = 0
    prompt_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    waste_bytes: int = 0  # held − needed at the peak-running step
    padding_bytes: int = 0
    completed: int = 0
    dropped: int = 0  # requests that could not fit even alone
    deferrals: int = 0  # admissions put off by an engine step: their state was being written
    encoder_runs: int = 0  # images encoded (traces with images: sim/vision.py)
    util_series: list[float] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def run_trace(
    manager: Manager,
    trace: list[TraceRequest],
    shapes: ModelShapes,
    kv_bytes: int,
    max_steps: int = 200_000,
    decode_stride: int = DECODE_STRIDE,
    prefill_budget: int = PREFILL_BUDGET,
    max_running: int | None = None,
) -> RunResult:
    """Replay ``trace``; utilization is measured against the common budget ``kv_bytes``.
    ``decode_stride`` 1 replays an engine trace step for step (arrivals in engine steps)."""
    result = RunResult(manager.name)
    pool = kv_bytes
    need = ExactNeed(shapes, block_size=getattr(manager, "block_size", BLOCK_SIZE))
    waste_taken_at = 0
    waiting: deque[int] = deque()
    arrivals = sorted((r.arrival, i) for i, r in enumerate(trace) if r.after is None)
    next_arrival = 0
    children: dict[int, list[int]] = {}
    for i, r in enumerate(trace):
        if r.after is not None:
            children.setdefault(r.after, []).append(i)
    running: list[Running] = []
    attempt = [0] * len(trace)
    first_hit: list[int | None] = [None] * len(trace)  # the hit its first admission try found
    counted = [False] * len(trace)
    util_sum = 0.0
    step = 0
    done = 0
    while (waiting or running or next_arrival < len(arrivals)) and step < max_steps:
        step += 1
        manager.new_step()
        while next_arrival < len(arrivals) and arrivals[next_arrival][0] < step:
            waiting.append(arrivals[next_arrival][1])
            next_arrival += 1
        # decode: every running request grows by one stride
        i = 0
        while i < len(running):
            req = running[i]
            new_len = min(req.length + decode_stride, req.final_len)
            if manager.extend(req, new_len):
                i += 1
                continue
            victim = running.pop()  # newest
            manager.finish(victim)
            need.remove(victim)
            result.preemptions += 1
            waiting.appendleft(victim.index)
            if victim is req:
                continue
        finished = [r for r in running if r.length >= r.final_len]
        for req in finished:
            manager.finish(req)
            need.remove(req)
            done += 1
            waiting.extend(children.get(req.index, ()))
        running = [r for r in running if r.length < r.final_len]
        # admit
        budget = prefill_budget
        engine_steps = decode_stride - 1  # the engine steps this step stands for, after the first
        while waiting:
            idx = waiting[0]
            tr = trace[idx]
            if budget < prefill_budget and len(tr.prompt) > budget:
                break  # the first admission of a step may exceed the budget (chunked prefill)
            if max_running is not None and len(running) >= max_running:
                break
            attempt[idx] += 1
            tokens = tr.prompt + tr.output
            req = Running(f"r{idx}.{attempt[idx]}", idx, tokens, len(tr.prompt), 0, len(tokens))
            req.images = tr.images
            hit = manager.admit(req)
            if first_hit[idx] is None:
                first_hit[idx] = manager.last_hit
            if hit is None and manager.deferred and engine_steps:
                # It starts from a state the current engine step writes: the scheduler stops
                # here and admits it one engine step later (a sim step is DECODE_STRIDE of them).
                engine_steps -= 1
                result.deferrals += 1
                manager.new_step()
                continue
            if hit is None:
                if not running and not manager.deferred:  # cannot fit even alone: drop it
                    waiting.popleft()
                    done += 1
                    result.dropped += 1
                break
            waiting.popleft()
            budget -= len(tr.prompt) - hit
            if not counted[idx]:
                # Counted once, at its first admission, like vLLM's stats (preempted re-runs are
                # not); at most the hit its first try found: a try refused mid-prefill cached
                # its own first chunks, which a real scheduler would have kept computing.
                counted[idx] = True
                result.hit_tokens += min(hit, first_hit[idx])
                result.prompt_tokens += len(tr.prompt)
            running.append(req)
        for r in running:
            need.set(r, r.length)
        needed = need.total
        util = needed / pool if pool else 0.0
        util_sum += util
        result.util_series.append(util)
        result.peak_util = max(result.peak_util, util)
        if len(running) > result.max_running:
            result.max_running = len(running)
            if result.max_running >= waste_taken_at * 1.02:  # census costs O(pool pages)
                waste_taken_at = result.max_running
                result.waste_bytes = manager.held_bytes() - needed
                result.padding_bytes = manager.padding_bytes()
    result.steps = step
    result.encoder_runs = manager.images.runs if manager.images is not None else 0
    result.avg_util = util_sum / step if step else 0.0
    result.completed = done
    return result
