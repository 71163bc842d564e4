"""jenga_vllm/core must never import vllm or torch (DESIGN §1): it is the paper, testable alone."""

import ast
import pathlib
import subprocess
import sys

CORE = pathlib.Path(__file__).resolve().parents[2] / "jenga_vllm" / "core"
FORBIDDEN = {"vllm", "torch", "triton"}


def test_no_forbidden_import_statement_under_core():
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


def test_importing_core_loads_neither_vllm_nor_torch():
    code = (
        "import sys, jenga_vllm.core; "
        "bad = [m for m in ('vllm', 'torch', 'triton') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
