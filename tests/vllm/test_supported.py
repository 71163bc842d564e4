"""The README's "Supported with jenga" table is supported.py's table, row for row."""

from __future__ import annotations

from pathlib import Path

from jenga_vllm.vllm import supported

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_support_table_is_the_one_in_supported_py():
    assert supported.readme_table() in README.read_text(), (
        "README.md's support table is out of date: paste jenga_vllm.vllm.supported.readme_table()"
    )


def test_every_refusal_names_a_fix():
    for row in supported.REFUSED:
        message = row.message("x")
        assert row.feature in message and row.fix in message
        assert row.stage in ("args", "config", "layout")
        assert (row.applies is None) == (row.stage == "layout")
