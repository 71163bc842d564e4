"""The simulator's markdown table and plots (benchmarks/results/simulate*.md, *.png)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sim.config import BLOCK_SIZE, GIB
from sim.loop import RunResult


@dataclass
class Case:
    model: str
    workload: str
    results: dict[str, RunResult]
    note: str = ""


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def write_report(
    cases: list[Case],
    out: Path,
    kv_bytes: int,
    seconds: float,
    quick: bool,
    failures: list[str] = (),  # type: ignore[assignment]
) -> None:
    lines = [
        "# KV-cache simulation: jenga vs vLLM 0.32's own layout (benchmarks/simulate.py)",
        "",
        f"KV budget {kv_bytes / GIB:.1f} GiB per manager, bf16 KV, block {BLOCK_SIZE} tokens"
        f"{' (--quick)' if quick else ''}; run took {seconds:.0f} s. 'vllm' is vLLM 0.32's real"
        " KVCacheManager on the layout vLLM's own functions chose; 'uniform' is the same with the"
        " hybrid manager off; 'vllm_pmu16' (Mamba hybrids) is vLLM with `--prefix-match-unit 16`, its"
        " sub-block hits. Max concurrency = most requests running at once.",
        "",
        "| model | workload | reqs | max running jenga / vllm / uniform / oracle | jenga÷vllm |"
        " jenga÷uniform | jenga÷oracle | avg util jenga / vllm | peak util jenga / vllm |"
        " hit rate jenga / vllm (/ vllm_pmu16) | waste at peak jenga / vllm (GiB, padding) |"
        " preempt jenga / vllm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        r = c.results
        j, v, o = r["jenga"], r["vllm"], r["oracle"]
        u = r.get("uniform")
        pmu = next((x for name, x in r.items() if name.startswith("vllm_pmu")), None)
        pmu_hit = f" / {pmu.hit_rate:.3f}" if pmu else ""
        lines.append(
            f"| {c.model} | {c.workload} | {j.completed} | {j.max_running} / {v.max_running} / "
            f"{u.max_running if u else 'n/a'} / {o.max_running} | "
            f"{_ratio(j.max_running, v.max_running)} | "
            f"{_ratio(j.max_running, u.max_running) if u else 'n/a'} | "
            f"{_ratio(j.max_running, o.max_running)} | {j.avg_util:.3f} / {v.avg_util:.3f} | "
            f"{j.peak_util:.3f} / {v.peak_util:.3f} | {j.hit_rate:.3f} / {v.hit_rate:.3f}{pmu_hit} | "
            f"{j.waste_bytes / GIB:.2f} ({j.padding_bytes / GIB:.2f}) / "
            f"{v.waste_bytes / GIB:.2f} ({v.padding_bytes / GIB:.2f}) | "
            f"{j.preemptions} / {v.preemptions} |"
        )
    if failures:
        lines += ["", "Cases that failed:", *[f"- {f}" for f in failures]]
    lines += ["", "## Layouts per model (jenga's plan, then vLLM's own decision)", ""]
    seen = set()
    for c in cases:
        if (c.model, c.note) not in seen:
            seen.add((c.model, c.note))
            lines.append(f"- **{c.model}**: {c.note}")
    lines += [
        "",
        "Plots: `simulate_concurrency.png` (max concurrency per model and workload, normalised to"
        " the oracle), `simulate_utilization.png` (utilization over time, chat workload).",
    ]
    out.write_text("\n".join(lines) + "\n")


def write_plots(cases: list[Case], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    managers = ["jenga", "vllm", "uniform", "oracle"]
    colors = dict(zip(managers, ["tab:blue", "tab:orange", "tab:green", "tab:red"], strict=True))
    fig, ax = plt.subplots(figsize=(max(8, len(cases) * 0.6), 4.5))
    width = 0.2
    for k, name in enumerate(managers):
        values = [
            c.results[name].max_running / max(1, c.results["oracle"].max_running)
            if name in c.results
            else 0
            for c in cases
        ]
        ax.bar(
            [i + (k - 1.5) * width for i in range(len(cases))],
            values,
            width,
            label=name,
            color=colors[name],
        )
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{c.model}\n{c.workload}" for c in cases], rotation=90, fontsize=6)
    ax.set_ylabel("max concurrency ÷ oracle")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "simulate_concurrency.png", dpi=120)
    plt.close(fig)

    chat = [c for c in cases if c.workload == "chat"]
    cols = 3
    rows = max(1, math.ceil(len(chat) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3 * rows), squeeze=False)
    for ax, c in zip(axes.flat, chat, strict=False):
        for name in managers:
            if name in c.results:
                ax.plot(c.results[name].util_series, label=name, linewidth=0.8, color=colors[name])
        ax.set_title(c.model, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("utilization", fontsize=7)
    for ax in list(axes.flat)[len(chat) :]:
        ax.axis("off")
    if chat:
        handles = [plt.Line2D([], [], color=colors[n], label=n) for n in managers]
        axes.flat[0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "simulate_utilization.png", dpi=120)
    plt.close(fig)
