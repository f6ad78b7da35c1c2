"""What ``pip install -e .`` installs is what the package imports; test tools come only with ``[dev]``."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from [dev]
    import tomli as tomllib

FIRST_PARTY = {"kimi_lab", "data_pipelines", "dashboards", "benchmarks", "tests"}
PACKAGES = ("kimi_lab", "data_pipelines", "dashboards", "benchmarks")
TEST_ONLY = {"pytest", "pytest-timeout", "ruff", "tomli"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return runtime, extras - {"kimi-lab"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level third-party modules a file imports: at import time, and inside functions."""
    tree = ast.parse(path.read_text())
    eager, lazy = set(), set()
    module_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        tops = {n.split(".")[0] for n in names} - FIRST_PARTY - set(sys.stdlib_module_names)
        (eager if id(node) in module_level else lazy).update(tops)
    return eager, lazy


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution(module: str) -> str:
    dists = _distributions().get(module, [module])
    return dists[0].lower().replace("_", "-")


def test_runtime_imports_are_declared_and_test_tools_are_not_runtime() -> None:
    runtime, extras = _declared()
    assert not runtime & TEST_ONLY, "test tools belong in [dev]"
    problems = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            eager, lazy = _imports(path)
            for module in eager:
                if _distribution(module) not in runtime:
                    problems.append(
                        f"{path.relative_to(REPO)} imports {module} at import time: not a dependency"
                    )
            for module in lazy:
                if _distribution(module) not in runtime | extras:
                    problems.append(f"{path.relative_to(REPO)} imports {module}: in no dependency or extra")
                if _distribution(module) in TEST_ONLY:
                    problems.append(f"{path.relative_to(REPO)} imports the test tool {module}")
    assert problems == []
