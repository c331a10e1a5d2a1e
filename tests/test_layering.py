"""The project's import graph keeps one direction (docs/design.md, "11. Layers").

The graph is read from the source, not from an interpreter: every ``import`` / ``from ... import`` of
``nuwa_ds``, ``data_pipelines`` and ``kernels``, at module level and inside functions (a lazy import is
still a dependency), relative imports resolved. ``from package import name`` is an edge to the
submodule ``package.name`` when there is one, else to the package's ``__init__``; so an ``__init__``
that imports its submodules is no cycle with them, unless a submodule imports the ``__init__``'s names
back. Importing a module does run its parents' ``__init__`` first; those implicit edges are not counted
(they would make every package a cycle with its own contents). Imports under ``if TYPE_CHECKING:`` are
not edges (they never run). Modules loaded by name (the CLI's command table, the bench suites) are not
edges either: the CLI dispatches to the top by design and imports only the bottom itself.

Checked: no cycle; ``nuwa_ds/model`` imports nothing of the project outside itself but the layers
below it, and no DeepSpeed; ``kernels/`` imports nothing of ``nuwa_ds`` or ``data_pipelines``; every
module sits in one layer of ``LAYERS`` and imports only from its own layer or those below.
"""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from test_train_utils import ROOT, clean_env

PACKAGES = ("nuwa_ds", "data_pipelines", "kernels")

# Bottom to top. A module may import from its own layer and the layers below it. Patterns are module
# names (``fnmatch``); the longest pattern that matches a module places it. A new module must be placed.
LAYERS: list[tuple[str, list[str]]] = [
    ("kernels: Triton kernels, no project imports", ["kernels", "kernels.*"]),
    ("foundation: standard library only", ["nuwa_ds.config_base", "nuwa_ds.files", "nuwa_ds.preemption"]),
    ("model: config and canvas geometry (no torch)", ["nuwa_ds.model.geometry", "nuwa_ds.model.config"]),
    ("model: orders and context tables", ["nuwa_ds.model.orders"]),
    ("model: layers", ["nuwa_ds.model.rope", "nuwa_ds.model.attention", "nuwa_ds.model.layers",
                       "nuwa_ds.model.text", "nuwa_ds.model.flops"]),
    ("model: generation and persistence", ["nuwa_ds.model.generation", "nuwa_ds.model.persistence"]),
    ("model: NuwaInfinity", ["nuwa_ds.model.nuwa", "nuwa_ds.model"]),
    ("tokenizer", ["nuwa_ds.tokenizer", "nuwa_ds.tokenizer.*"]),
    ("metrics", ["nuwa_ds.metrics", "nuwa_ds.metrics.*"]),
    ("run config and the package's names", ["nuwa_ds.config", "nuwa_ds"]),
    ("data", ["data_pipelines", "data_pipelines.*"]),
    ("training system", ["nuwa_ds.training", "nuwa_ds.training.*"]),
    ("the model directory: save, load, export from a checkpoint, its VQ tokenizer", ["nuwa_ds.model_dir"]),
    ("commands", ["nuwa_ds.cli", "nuwa_ds.train", "nuwa_ds.export", "nuwa_ds.generate", "nuwa_ds.evaluate",
                  "nuwa_ds.text_encoder"]),
    ("applications", ["nuwa_ds.recipe_common", "nuwa_ds.recipe", "nuwa_ds.video_recipe", "nuwa_ds.demo",
                      "nuwa_ds.bench", "nuwa_ds.bench.*"]),
]

MODEL = "nuwa_ds.model"
BELOW_MODEL = ("nuwa_ds.config_base", "kernels")
"""What nuwa_ds/model may import outside itself (and their submodules)."""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line}{', in a function' if self.lazy else ''})"


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: list[Edge]
    external: dict[str, set[str]]  # module -> top-level names of other distributions it imports

    def targets(self, module: str) -> set[str]:
        return {e.target for e in self.edges if e.source == module}


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(import node, inside a function) for every import that can run, in source order."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:  # the TYPE_CHECKING branch never runs
                    yield from visit(sub, in_function)
            else:
                yield from visit(child, in_function)

    def visit(node, in_function):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        yield from walk(node, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from walk(tree, False)


def build_graph(root: Path, packages=PACKAGES) -> Graph:
    modules: dict[str, Path] = {}
    is_package: dict[str, bool] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name, pkg = _module_name(path, root)
            modules[name], is_package[name] = path, pkg

    def known(name: str) -> str | None:
        """The project module ``name`` names, or its nearest project ancestor (``a.b.attr`` -> ``a.b``)."""
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    edges, external = [], {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, lazy in _imports(tree):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            else:
                if node.level:  # relative: from the package this module is in (or is)
                    base = name.split(".") if is_package[name] else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module
                # `from pkg import sub` imports the submodule; `from pkg import name` the package's name
                wanted = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
            for target in dict.fromkeys(wanted):  # `from m import a, b`: one edge
                project = known(target) if target.split(".")[0] in packages else None
                if project is None:
                    external.setdefault(name, set()).add(target.split(".")[0])
                elif project != name:
                    edges.append(Edge(name, project, node.lineno, lazy))
    return Graph(modules, edges, external)


def find_cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    succ = {m: sorted(graph.targets(m)) for m in graph.modules}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # recursion depth: the longest import chain
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return cycles


def describe_cycle(graph: Graph, component: list[str]) -> str:
    inside = set(component)
    return "; ".join(str(e) for e in graph.edges if e.source in inside and e.target in inside)


def layer_of(module: str, layers=LAYERS) -> int | None:
    best, best_len = None, -1
    for i, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            if fnmatch.fnmatchcase(module, pattern) and len(pattern) > best_len:
                best, best_len = i, len(pattern)
    return best


def layer_violations(graph: Graph, layers=LAYERS) -> list[str]:
    problems = [f"{m} is in no layer: add it to LAYERS in tests/test_layering.py"
                for m in sorted(graph.modules) if layer_of(m, layers) is None]
    for e in graph.edges:
        src, dst = layer_of(e.source, layers), layer_of(e.target, layers)
        if src is not None and dst is not None and dst > src:
            problems.append(f"{e}: layer '{layers[src][0]}' imports from the higher layer '{layers[dst][0]}'")
    return problems


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


GRAPH = build_graph(ROOT)


# ----------------------------------------------------------------------------------------------
# The project


def test_the_graph_is_read():
    # a sanity floor, so that a broken reader cannot pass the tests below on an empty graph
    assert len(GRAPH.modules) > 60 and len(GRAPH.edges) > 150
    assert {"nuwa_ds.model.generation", "nuwa_ds.model.persistence"} <= GRAPH.targets("nuwa_ds.model.nuwa")
    assert "nuwa_ds.model.nuwa" in GRAPH.targets("nuwa_ds.model")  # a lazy import inside __getattr__


def test_no_import_cycles():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(describe_cycle(GRAPH, c) for c in cycles)


def test_model_imports_nothing_above_itself_and_no_deepspeed():
    model = [m for m in GRAPH.modules if _within(m, (MODEL,))]
    assert len(model) >= 10
    above = [str(e) for e in GRAPH.edges
             if e.source in model and not _within(e.target, (MODEL, *BELOW_MODEL))]
    assert not above, "nuwa_ds/model reaches above itself:\n" + "\n".join(above)
    deepspeed = [m for m in model if "deepspeed" in GRAPH.external.get(m, set())]
    assert not deepspeed, f"DeepSpeed imported in the model: {deepspeed}"


def test_kernels_import_nothing_of_the_project():
    reaches = [str(e) for e in GRAPH.edges if _within(e.source, ("kernels",)) and not _within(e.target, ("kernels",))]
    assert not reaches, "kernels/ imports the project:\n" + "\n".join(reaches)


def test_every_import_points_down_the_layers():
    problems = layer_violations(GRAPH)
    assert not problems, "\n".join(problems)


def test_cli_and_configs_start_without_torch():
    """``nuwa-ds train`` blocks its stop signals before torch starts threads (docs/decisions.md, "Stop
    signals"): the CLI, the package and every config must import without torch."""
    code = ("import sys\n"
            "import nuwa_ds, nuwa_ds.cli, nuwa_ds.config, nuwa_ds.model.config, nuwa_ds.preemption\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'deepspeed', 'triton'}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_compile_check_table_is_the_models():
    """kernels/compile_check.py writes out a context table instead of importing the model's."""
    from kernels import compile_check as K
    from nuwa_ds.model import orders as O

    table = O.context_table((1, 2, 2), "down", (0, 1, 1))
    assert table.ctx_index.tolist() == [list(r) for r in K.EXAMPLE_CTX_INDEX]
    assert table.ctx_offset.tolist() == [list(r) for r in K.EXAMPLE_CTX_OFFSET]
    assert K.EXAMPLE_OWN_OFFSET == O.own_offset_id((0, 1, 1))
    assert K.EXAMPLE_BIAS_COLUMNS == O.num_offsets((0, 1, 1)) + 1


# ----------------------------------------------------------------------------------------------
# The checks can fail


def _write(root: Path, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\n",  # an __init__ re-exporting its submodule: no cycle
        "pkg/a.py": "from . import b\nA = 1\n",
        "pkg/b.py": "def f():\n    from .a import A\n    return A\n",  # the cycle a -> b -> a, kept alive lazily
        "pkg/c.py": "import pkg.b\n",
        "pkg/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n",
        "pkg/e.py": "import pkg.d\n",
    })
    graph = build_graph(tmp_path, packages=("pkg",))
    assert find_cycles(graph) == [["pkg.a", "pkg.b"]]
    assert "pkg.a -> pkg.b (line 1)" in describe_cycle(graph, ["pkg.a", "pkg.b"])
    assert Edge("pkg.b", "pkg.a", 2, True) in graph.edges


def test_an_import_of_the_package_names_back_is_a_cycle(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\n",
        "pkg/a.py": "A = 1\n",
        "pkg/b.py": "from pkg import A\n",  # pkg's name: an edge to pkg/__init__
    })
    assert find_cycles(build_graph(tmp_path, packages=("pkg",))) == []
    (tmp_path / "pkg/a.py").write_text("from pkg import A as _\nA = 1\n")  # a submodule reads its package back
    assert find_cycles(build_graph(tmp_path, packages=("pkg",))) == [["pkg", "pkg.a"]]


def test_an_upward_import_breaks_the_layers(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/low.py": "def f():\n    import pkg.high\n", "pkg/high.py": ""})
    layers = [("low", ["pkg", "pkg.low"]), ("high", ["pkg.high"])]
    graph = build_graph(tmp_path, packages=("pkg",))
    assert layer_violations(graph, layers) == [
        "pkg.low -> pkg.high (line 2, in a function): layer 'low' imports from the higher layer 'high'"]
    assert layer_violations(graph, [("low", ["pkg"])]) == ["pkg.high is in no layer: add it to LAYERS in "
                                                           "tests/test_layering.py",
                                                           "pkg.low is in no layer: add it to LAYERS in "
                                                           "tests/test_layering.py"]
