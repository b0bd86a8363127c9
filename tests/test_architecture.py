"""The package's shape: imports flow one way through the layers docs/design.md lists, with no circle anywhere (imports
inside functions included), and no file or function grows past what a reader takes in at once.

The layer list below is docs/design.md's ("## Layout", the `layers:` block); a test checks the two agree. A module may
import modules of a lower layer, and of its own package (`distill/iteration.py` may import `distill/recipe.py`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "flashdistill"
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60

# Bottom to top; a name is a top-level module or package of flashdistill.
LAYERS = [
    ["errors"],
    ["parsing"],
    ["files", "imageio", "flow", "conditioning"],
    ["records", "runfolder"],
    ["runtime"],
    ["world"],
    ["models"],
    ["sampling"],
    ["data"],
    ["distill", "teacher"],
    ["pipeline"],
    ["bench"],
    ["quickstart", "studies"],
    ["cli"],
    ["__main__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    """Dotted module name (without the `flashdistill.` prefix; a package by its folder name) -> file."""
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every flashdistill module `name` imports, at the top or inside a function, relative imports resolved."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(["flashdistill", *package[:len(package) - node.level + 1], *(
                    [node.module] if node.module else [])])
            else:
                base = node.module or ""
            candidates = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for dotted in candidates:
            if not dotted.startswith("flashdistill."):
                continue
            dotted = dotted[len("flashdistill."):]
            while dotted and dotted not in known:  # `from pkg.mod import name`: the module, not the name
                dotted = dotted.rpartition(".")[0]
            if dotted and dotted != name:
                targets.add(dotted)
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def top(name: str) -> str:
    return name.split(".")[0]


def test_every_module_has_a_layer():
    missing = sorted({top(m) for m in modules()} - set(LAYER))
    assert not missing, f"add these to LAYERS (and the README's layer list): {missing}"


def test_imports_flow_down_the_layers():
    against = []
    for source, targets in graph().items():
        for target in targets:
            same_package = top(source) == top(target) and (SRC / top(source)).is_dir()
            if not same_package and LAYER.get(top(target), 99) >= LAYER.get(top(source), -1):
                against.append(f"{source} -> {target}")
    assert not against, "imports against the layer list:\n" + "\n".join(sorted(against))


def test_no_import_circle():
    edges = graph()
    state, stack, circles = {}, [], []

    def visit(node: str) -> None:  # depth-first; a grey node met again closes a circle
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "grey":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "black"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_files_and_functions_stay_readable():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(SRC.parent)
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{where}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, (f"over {MAX_FILE_LINES} lines a file or {MAX_FUNCTION_LINES} a function:\n"
                          + "\n".join(too_long))


def test_the_design_page_lists_these_layers():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    block = re.search(r"layers, top to bottom:\n((?:    .+\n)+)", design)
    assert block, "docs/design.md: the layer list ('layers, top to bottom:' and an indented block) is missing"
    listed = [line.split(":", 1)[1].split() for line in block.group(1).splitlines()]
    assert listed == LAYERS[::-1], "docs/design.md's layer list and tests/test_architecture.py's LAYERS differ"


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The graph is not vacuous: function-level and relative imports count, names resolve to their modules."""
    path = tmp_path / "trainer.py"
    path.write_text("from . import dmd\nfrom ..bench.quick import make_scorer\n\n\ndef f():\n"
                    "    import flashdistill.world.pools as pools\n"
                    "    from flashdistill.models.mmdit import FlowModel\n")
    known = dict.fromkeys(["distill", "distill.trainer", "distill.dmd", "bench.quick", "world.pools", "models",
                           "models.mmdit"], path)
    assert imports_of("distill.trainer", path, known) == {"distill", "distill.dmd", "bench.quick", "world.pools",
                                                          "models.mmdit"}
