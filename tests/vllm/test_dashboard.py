"""The Grafana dashboard (docs/grafana/jenga_kv_cache.json) and the README show every jenga series;
the dashboard only series the plugin defines, with vLLM's datasource conventions."""

from __future__ import annotations

import json
import re
from pathlib import Path

from jenga_vllm.vllm import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "jenga_kv_cache.json"
COUNTERS = {name for name, _, _ in metrics.TYPE_COUNTERS + metrics.POOL_COUNTERS}
GAUGES = {name for name, _, _ in metrics.TYPE_GAUGES + metrics.POOL_GAUGES}


def exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def test_every_series_has_a_panel_and_every_panel_a_defined_series():
    used = set()
    for expr in exprs():
        for name in re.findall(r"vllm:jenga_\w+", expr):
            if name not in GAUGES:  # a counter's samples are named <name>_total
                assert name.endswith("_total") and name.removesuffix("_total") in COUNTERS, name
                name = name.removesuffix("_total")
            used.add(name)
    assert used == COUNTERS | GAUGES


def test_queries_use_the_datasource_input_and_the_model_name_variable():
    board = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    assert all('model_name="$model_name"' in e for e in exprs())


def test_the_readme_documents_every_series():
    readme = (DASHBOARD.parents[2] / "README.md").read_text()
    for name in GAUGES:
        assert f"`{name}`" in readme, name
    for name in COUNTERS:
        assert f"`{name}_total`" in readme, name
