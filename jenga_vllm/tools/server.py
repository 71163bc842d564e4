"""A ``vllm serve`` process on 127.0.0.1 for the demo and the end-to-end tests.

What it owns
    ``VllmServer``: starts ``vllm serve MODEL --kv-cache-manager M ...`` as a child process (its
    log goes to a file), waits for ``/health``, offers ``complete`` (OpenAI completions API),
    ``metrics`` (Prometheus text parsed into name → value, labels summed), ``reset_prefix_cache``
    (vLLM's dev endpoint; the server runs with ``VLLM_SERVER_DEV_MODE=1``) and the startup
    capacity parsed from vLLM's log line, and stops the server with SIGINT (then SIGKILL).
    Uses only the standard library on the client side.

Invariant: a started server is always stopped (context manager), and its whole process group
with it, so no EngineCore outlives the caller.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CAPACITY_RE = re.compile(
    r"KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per request: "
    r"([\d.]+)x"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class VllmServer:
    """One ``vllm serve`` child process; use as a context manager."""

    def __init__(
        self,
        model: str | Path,
        manager: str,
        *,
        kv_cache_memory_bytes: int,
        max_model_len: int = 512,
        block_size: int = 32,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        startup_timeout: float = 600.0,
    ) -> None:
        self.model = str(model)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"vllm-serve-{manager}-", suffix=".log")[1])
        self.args = [
            sys.executable, "-m", "jenga_vllm.tools.vllm_cli", "serve", self.model,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--kv-cache-manager", manager,
            "--dtype", "float32", "--enforce-eager", "--seed", "0",
            "--max-model-len", str(max_model_len), "--block-size", str(block_size),
            "--kv-cache-memory-bytes", str(kv_cache_memory_bytes),
            *extra_args,
        ]  # fmt: skip
        self.startup_timeout = startup_timeout
        self.env = env or {}
        self.process: subprocess.Popen | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> VllmServer:
        env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", **self.env)
        log = open(self.log_path, "w")  # noqa: SIM115 - the child owns it until it exits
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vllm serve did not become healthy:\n{self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ---- client ----------------------------------------------------------------------------
    def _post(self, path: str, body: dict | None, timeout: float = 300) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def _completion(self, prompt: str | list[int], max_tokens: int, extra: dict) -> dict:
        return {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            **extra,
        }

    def complete(
        self, prompt: str | list[int], max_tokens: int = 16, **extra: Any
    ) -> tuple[int, Any]:
        """(HTTP status, JSON body) of a greedy /v1/completions request (``prompt``: text or
        token ids); ``extra``: more body fields (e.g. ``kv_transfer_params``)."""
        return self._post("/v1/completions", self._completion(prompt, max_tokens, extra))

    def abandon(
        self, prompt: str | list[int], max_tokens: int, after_s: float, **extra: Any
    ) -> bool:
        """Send ``complete``'s request and disconnect after ``after_s`` seconds, as a client
        that gives up does (vLLM aborts the request); True if it was still running then."""
        body = self._completion(prompt, max_tokens, extra)
        try:
            self._post("/v1/completions", body, timeout=after_s)
        except TimeoutError:
            return True
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                return True
            raise
        return False

    def chat(self, content: list[dict[str, Any]], max_tokens: int = 16) -> tuple[int, Any]:
        """(HTTP status, JSON body) of a greedy /v1/chat/completions request: one user message
        with OpenAI-style ``content`` parts (text, image_url)."""
        return self._post(
            "/v1/chat/completions",
            {
                "model": self.model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "ignore_eos": True,
            },
        )

    def get(self, path: str, timeout: float = 60) -> tuple[int, Any]:
        """(HTTP status, JSON body) of a GET request."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def metrics_text(self) -> str:
        """The raw text of /metrics (Prometheus exposition format)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            return r.read().decode()

    def metric_samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every Prometheus sample of /metrics as (name, labels, value)."""
        samples = []
        for line in self.metrics_text().splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name, _, labels = name_labels.partition("{")
            pairs = dict(LABEL_RE.findall(labels))
            try:
                samples.append((name, pairs, float(value)))
            except ValueError:
                continue
        return samples

    def reset_prefix_cache(self) -> bool:
        status, body = self._post("/reset_prefix_cache", None)
        return status == 200 and bool(body and body.get("success"))

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by metric name (labels summed; _created samples dropped)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            if name.endswith("_created"):
                continue
            try:
                values[name] = values.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return values

    def capacity(self) -> tuple[int, float]:
        """(KV cache size in tokens, max concurrency) from vLLM's startup log line."""
        match = CAPACITY_RE.search(self.log_text())
        if match is None:
            raise RuntimeError(f"no KV-capacity line in the server log:\n{self.log_tail()}")
        return int(match.group(1).replace(",", "")), float(match.group(3))
