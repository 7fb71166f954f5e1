"""The layout of ``cimc.cli``: every command module imports on its own without torch or
matplotlib, and no import cycle runs through the CLI (nothing outside it imports it)."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

import cimc.cli

HEAVY = ("torch", "matplotlib", "onnxruntime")
COMMANDS = {
    "inspect",
    "passes",
    "targets",
    "compile",
    "disasm",
    "run",
    "compare",
    "demo",
    "train",
    "search",
    "sensitivity",
    "finetune",
}
CLI_MODULES = sorted(
    f"cimc.cli.{m.name}" for m in pkgutil.iter_modules(cimc.cli.__path__) if m.name != "__main__"
)


def _package_files() -> dict[str, Path]:
    """Dotted name -> source file of every module of cimc, cimc.passes and cimc.targets."""
    files = {}
    for package in ("cimc", "cimc.passes", "cimc.targets"):
        root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if package == "cimc" and parts[0] in ("passes", "targets"):
                continue
            name = ".".join((package, *parts)).removesuffix(".__init__")
            files[name] = path
    return files


def _import_graph() -> nx.DiGraph:
    """Edges module -> cimc module it imports, at top level or inside a function."""
    files = _package_files()
    graph = nx.DiGraph()
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in files and t != name)
    return graph


def test_parser_has_every_command():
    sub = next(a for a in cimc.cli.build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == COMMANDS


@pytest.mark.parametrize("module", CLI_MODULES)
def test_cli_module_imports_alone_without_heavy_dependencies(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"{module} imports {proc.stdout.strip()}"


def test_no_import_cycle_through_the_cli():
    graph = _import_graph()
    assert ("cimc.cli", "cimc.cli.run") in graph.edges  # the graph sees relative imports
    assert ("cimc.cli.run", "cimc.report.fidelity") in graph.edges  # and lazy ones
    outside = [
        (a, b) for a, b in graph.edges if b.startswith("cimc.cli") and not a.startswith("cimc.cli")
    ]
    assert outside == [], "only the CLI may import the CLI"
    cycles = [
        c
        for c in nx.strongly_connected_components(graph)
        if len(c) > 1 and any(m.startswith(("cimc.cli", "cimc.report")) for m in c)
    ]
    assert cycles == []
