"""The shape of the code: short, simple functions; imports that run one way; the README's map of it."""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "scratchllm"
MAX_LINES = 80
MAX_COMPLEXITY = 20  # radon ranks 21-30 D, which is where a function stops being readable in one go


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{name}.{node.name} ({path.name}:{node.lineno}): {lines} lines")
    assert long == [], "split these functions:\n" + "\n".join(long)


def test_no_function_is_ranked_d_or_worse_by_radon():
    from radon.complexity import cc_rank, cc_visit
    from radon.visitors import Function

    complex_ = []
    for name, path in MODULES.items():
        blocks = [b for b in cc_visit(path.read_text(encoding="utf-8")) if isinstance(b, Function)]
        for block in blocks + [c for b in blocks for c in b.closures]:
            if block.complexity > MAX_COMPLEXITY:
                complex_.append(f"{name}.{block.fullname} ({path.name}:{block.lineno}): "
                                f"{cc_rank(block.complexity)} ({block.complexity})")
    assert complex_ == [], "simplify these functions:\n" + "\n".join(complex_)


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports, at the top or inside functions alike."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of this module, `level - 1` steps up
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from package import module` names a module; `from module import name` the module itself.
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                      for alias in node.names}
    return {m for m in found if m in MODULES and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (as the modules along it), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once every path from it is

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    # The graph is really read:
    assert graph["scratchllm.cli"] >= {"scratchllm.config", "scratchllm.util.errors"}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a"}}, ["a", "a"]),
])
def test_cycle_finder(graph, expected):
    assert _cycle(graph) == expected


# The layers, bottom to top: a module imports from the layers below its own, or from its own package.
LAYERS = ["util", "config", "runtime", "tokenizer", "data", "model", "run", "eval", "train", "chat", "demo",
          "cli", "__main__"]


def _layer(module: str) -> str:
    """The layer (a top-level package or module of scratchllm) that `module` belongs to."""
    return module.split(".")[1]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of `graph` that does not run down the layers ('a -> b'), nor stays in its package."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if _layer(a) != _layer(b) and rank[_layer(b)] > rank[_layer(a)])


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if m != "scratchllm" and _layer(m) not in LAYERS)
    assert unplaced == [], "add these to LAYERS (and the README's layout): " + ", ".join(unplaced)


def test_every_import_runs_down_the_layers():
    graph = {name: _imports(name, path) for name, path in MODULES.items() if name != "scratchllm"}
    assert "scratchllm.eval.loss" in graph["scratchllm.train.trainer"]  # the graph is really read
    assert _upward(graph) == []


def test_an_upward_import_is_caught(tmp_path):
    """A checkpoint module that reached up into evaluation, at the top or inside a function."""
    source = MODULES["scratchllm.run.checkpoint"].read_text(encoding="utf-8")
    for planted in ("from scratchllm.eval.loss import evaluate\n",
                    "def f():\n    from ..train import trainer\n"):
        path = tmp_path / "checkpoint.py"
        path.write_text(source + "\n\n" + planted, encoding="utf-8")
        graph = {"scratchllm.run.checkpoint": _imports("scratchllm.run.checkpoint", path)}
        found = _upward(graph)
        assert len(found) == 1 and found[0].startswith("scratchllm.run.checkpoint -> scratchllm.")
        assert found[0].split(" -> ")[1] in ("scratchllm.eval.loss", "scratchllm.train.trainer")


@pytest.mark.parametrize("graph, expected", [
    ({"scratchllm.train.trainer": {"scratchllm.train.metrics", "scratchllm.eval.loss"}}, []),  # beside, below
    ({"scratchllm.data.loader": {"scratchllm.tokenizer.encoding"}}, []),
    ({"scratchllm.util.errors": {"scratchllm.config"}}, ["scratchllm.util.errors -> scratchllm.config"]),
    ({"scratchllm.eval.tasks": {"scratchllm.train.trainer"}},
     ["scratchllm.eval.tasks -> scratchllm.train.trainer"]),
])
def test_upward_finder(graph, expected):
    assert _upward(graph) == expected


def test_readme_layout_names_every_module():
    """The layout section of README.md lists each module of the package, and nothing that is gone."""
    readme = (SRC.parent / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    listed = set(re.findall(r"^  ([\w/]+\.py)\b", layout, flags=re.M))
    actual = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
              if p.name not in ("__init__.py", "__main__.py")}
    assert listed == actual
