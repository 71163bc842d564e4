"""jenga_vllm/core must never import vllm or torch (docs/design.md §1): it is the paper, testable alone."""

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


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(CORE.parents[1]).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: pathlib.Path) -> set[str]:
    """Modules of the core this file imports when it runs (``if TYPE_CHECKING:`` blocks never
    run, so a type hint does not make a cycle)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("jenga_vllm.core"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("jenga_vllm.core")}
    return found


def test_the_core_modules_import_each_other_without_cycles():
    # Packages are nodes too: importing one runs its __init__ and whatever that imports.
    graph = {_module_name(p): _runtime_imports(p) for p in CORE.rglob("*.py")}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [module]))
        if state.get(module) == 2:
            return
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            visit(dep, path + [module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])
