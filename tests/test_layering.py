"""Imports point downward: the layer table of ARCHITECTURE.md, held by reading every module's imports.

``PLACES`` puts each package (or root module) in a layer; a module may import its own layer
and those below. An import that runs upward fails, as does a circle (two modules, or two
packages, that import each other, directly or through others): both make a layer impossible
to use or test without the one above it. A lazy import (inside a function) of an optional
feature that lives higher up may stay, marked on its line with ``# layering: optional``.
A module the table does not place fails too: a new package is given its layer here.

Moving modules into packages (``kimi_lab/inference/...``) only renames keys of ``PLACES``;
the longest matching name wins, so one module of a package can sit in another layer.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO

LAYERS = ("base", "core", "decode", "phases", "serving", "top")
PLACES = {
    # base: names, typed configs, errors, the chat format and its wire forms (Jinja, OpenAI's)
    "kimi_lab": "base",  # the package's __init__ (its version)
    "kimi_lab.config": "base",
    "kimi_lab.metrics": "base",
    "kimi_lab.errors": "base",
    "kimi_lab.chat_format": "base",
    "kimi_lab.chat_template": "base",
    "kimi_lab.openai_format": "base",  # spoken by the server and by the swarm's HTTP policy alike
    "kimi_lab.ports": "base",
    "kimi_lab.cpu": "base",  # CPU allocator and thread set-up
    # core: the model, data, optimizers, tools, tasks and the run directory's files
    "kimi_lab.model": "core",
    "kimi_lab.data": "core",
    "kimi_lab.optim": "core",
    "kimi_lab.tools": "core",
    "kimi_lab.tasks": "core",
    "kimi_lab.tracking": "core",
    # decode: the one loader, the one decode path and the one tool turn, below every consumer
    # (RL and PARL rollouts sample through them as serve and chat do)
    "kimi_lab.decode": "decode",
    # phases: training phases and what they drive
    "kimi_lab.phases": "phases",
    "kimi_lab.rl": "phases",
    "kimi_lab.swarm": "phases",
    "kimi_lab.hf": "phases",
    "kimi_lab.parallel": "phases",
    "data_pipelines": "phases",  # swarm demonstrations are played through the swarm runtime
    # serving: a checkpoint answering requests
    "kimi_lab.serving": "serving",
    # top: commands, the training entry point, experiments, reports, the dashboard, benchmarks
    "kimi_lab.cli": "top",
    "kimi_lab.commands": "top",
    "kimi_lab.train": "top",
    "kimi_lab.train_args": "top",
    "kimi_lab.experiments": "top",
    "kimi_lab.reports": "top",
    "dashboards": "top",
    "benchmarks": "top",
}
ROOTS = ("kimi_lab", "data_pipelines", "dashboards", "benchmarks")
OPTIONAL_TAG = "# layering: optional"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def place(module: str) -> str | None:
    """The key of ``PLACES`` that holds ``module`` (the longest one), or None. ``kimi_lab`` holds
    only the package's ``__init__``: each of its modules and packages is placed by name."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in PLACES and (n > 1 or parts[0] != "kimi_lab" or len(parts) == 1):
            return ".".join(parts[:n])
    return None


def imports(path: Path, modules: set[str]) -> list[tuple[str, int, bool, str]]:
    """(imported project module, line, lazy, the line's text) for every import of the project."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    top = {id(node) for node in tree.body}
    top |= {id(n) for node in tree.body if isinstance(node, ast.If | ast.Try) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # "pkg.mod.func" -> "pkg.mod"
                name = name.rpartition(".")[0]
            if name:
                source = "\n".join(lines[node.lineno - 1 : node.end_lineno])
                out.append((name, node.lineno, id(node) not in top, source))
    return out


def import_graph(root: Path) -> dict[str, list[tuple[str, int, bool, str]]]:
    files = {
        module_name(p, root): p
        for r in ROOTS
        if (root / r).is_dir()
        for p in sorted((root / r).rglob("*.py"))
    }
    graph = {m: imports(p, set(files)) for m, p in files.items()}
    return {m: [i for i in found if i[0] != m] for m, found in graph.items()}


def layering_violations(root: Path = REPO) -> list[str]:
    graph = import_graph(root)
    found = [
        f"{m}: not in the layer table (tests/test_layering.py PLACES)" for m in graph if place(m) is None
    ]
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    for m, edges in graph.items():
        here = place(m)
        if here is None:
            continue
        for target, line, lazy, source in edges:
            there = place(target)
            if there is None or rank[PLACES[there]] <= rank[PLACES[here]]:
                continue
            if lazy and OPTIONAL_TAG in source:
                continue
            message = f"{m}:{line} imports {target} upward ({PLACES[here]} -> {PLACES[there]})"
            message += "" if lazy else " at module level"
            if message not in found:  # one line may import several names
                found.append(message)
    found += [f"circle: {', '.join(c)}" for c in circles({m: {t for t, *_ in e} for m, e in graph.items()})]
    packages: dict[str, set[str]] = defaultdict(set)
    for m, edges in graph.items():
        for target, *_ in edges:
            a, b = place(m), place(target)
            if a and b and a != b:
                packages[a].add(b)
    found += [f"circle between packages: {', '.join(c)}" for c in circles(packages)]
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of more than one node that reach each other (Tarjan's components), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = itertools.count()

    def visit(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_imports_point_downward_and_never_in_circles() -> None:
    assert layering_violations() == []


def test_the_table_names_existing_modules_in_known_layers() -> None:
    assert set(PLACES.values()) == set(LAYERS)
    stale = [k for k in PLACES if not (REPO / Path(*k.split("."))).with_suffix(".py").is_file()]
    assert [k for k in stale if not (REPO / Path(*k.split("."))).is_dir()] == []  # moved or renamed: update


def test_the_check_sees_upward_imports_circles_and_unplaced_modules(tmp_path: Path) -> None:
    files = {
        "kimi_lab/__init__.py": "",
        "kimi_lab/metrics.py": "",
        "kimi_lab/model/__init__.py": "import kimi_lab.serving.serve\n",  # core -> serving, at module level
        "kimi_lab/serving/serve.py": "def f():\n    from kimi_lab.cli import main\n",  # serving -> top, lazy
        "kimi_lab/serving/chat_session.py": "def f():\n    from kimi_lab.cli import main  # layering: optional\n",
        "kimi_lab/cli.py": "from kimi_lab.metrics import X\ndef main(): ...\n",
        "kimi_lab/data/a.py": "from kimi_lab.data.b import g\n",
        "kimi_lab/data/b.py": "def g():\n    from kimi_lab.data import a\n",
        "kimi_lab/newthing.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert sorted(layering_violations(tmp_path)) == [
        "circle: kimi_lab.data.a, kimi_lab.data.b",
        "kimi_lab.model:1 imports kimi_lab.serving.serve upward (core -> serving) at module level",
        "kimi_lab.newthing: not in the layer table (tests/test_layering.py PLACES)",
        "kimi_lab.serving.serve:2 imports kimi_lab.cli upward (serving -> top)",
    ]
