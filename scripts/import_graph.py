#!/usr/bin/env python3
"""Print the import graph between clave's rooms and check the layout's rules.

    python scripts/import_graph.py            # rooms, arrows with counts, then the checks
    python scripts/import_graph.py --modules  # also every module-to-module arrow

Rules (exit status 1 when one is broken):
- no import cycle between modules (lazy imports inside functions count: they are dependencies too);
- `core` imports no other room; `link` only `core`; `enclave` only `core` and `link` (what the enclave
  image holds); nothing imports `dev` or `cli` except `cli` and `dev` themselves;
- no module imports another module's private name (`from clave.x import _y`);
- `core` imports no I/O module (sockets, files, processes, event loops, AWS, HTTP): it stays pure.
Reads the source with `ast`; imports nothing of clave.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "clave"

# room -> rooms it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "link": {"core"},
    "enclave": {"core", "link"},
    "sidecar": {"core", "link"},
    "cli": {"core", "link", "sidecar", "dev", "enclave"},
    "dev": {"core", "link", "sidecar", "enclave"},
}
TOP = "top"  # clave/__init__.py
IO_MODULES = {"asyncio", "socket", "subprocess", "sqlite3", "threading", "multiprocessing", "pathlib", "shutil",
              "urllib", "http", "aiohttp", "boto3", "botocore", "uvloop", "fcntl", "signal"}


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)
    external: dict[str, set[str]] = field(default_factory=dict)  # module -> top-level non-clave imports


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else TOP


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def build(package: Path = PACKAGE) -> Graph:
    graph = Graph()
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" not in path.parts:
            graph.modules[module_name(path, package)] = path
    for name, path in graph.modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        external = graph.external.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.split(".")[0] == "clave")
                external.update(a.name.split(".")[0] for a in node.names if a.name.split(".")[0] != "clave")
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module) if node.level else (node.module or "")
                if base.split(".")[0] != "clave":
                    external.add(base.split(".")[0])
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in graph.modules:  # `from clave.x import module`
                        targets.add(sub)
                        continue
                    targets.add(base)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        graph.private.append(f"{name} imports private {base}.{alias.name}")
        # an import of a package names the package module; keep only known modules
        graph.edges[name] = {t for t in targets if t in graph.modules and t != name}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.edges.get(v, ())):
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
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph.modules):
        if v not in index:
            visit(v)
    return found


def room_arrows(graph: Graph) -> Counter[tuple[str, str]]:
    arrows: Counter[tuple[str, str]] = Counter()
    for source, targets in graph.edges.items():
        for target in targets:
            a, b = room_of(source), room_of(target)
            if a != b:
                arrows[(a, b)] += 1
    return arrows


def violations(graph: Graph) -> list[str]:
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    for source, targets in sorted(graph.edges.items()):
        for target in sorted(targets):
            a, b = room_of(source), room_of(target)
            if a == b or b == TOP or a == TOP:
                continue
            if b not in ALLOWED.get(a, set()):
                problems.append(f"forbidden arrow {a} -> {b}: {source} imports {target}")
    problems += graph.private
    for module, imported in sorted(graph.external.items()):
        if room_of(module) == "core" and imported & IO_MODULES:
            problems.append(f"core is pure, but {module} imports {', '.join(sorted(imported & IO_MODULES))}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", action="store_true", help="also print every module-to-module arrow")
    args = parser.parse_args(argv)
    graph = build()
    rooms = Counter(room_of(m) for m in graph.modules)
    lines = Counter[str]()
    for name, path in graph.modules.items():
        lines[room_of(name)] += len(path.read_text().splitlines())
    print("rooms (modules, lines):")
    for room in sorted(rooms):
        print(f"  {room:8} {rooms[room]:3} modules {lines[room]:6} lines")
    print("arrows between rooms (imports):")
    for (a, b), n in sorted(room_arrows(graph).items()):
        print(f"  {a:8} -> {b:8} {n}")
    if args.modules:
        print("module arrows:")
        for source in sorted(graph.edges):
            for target in sorted(graph.edges[source]):
                print(f"  {source} -> {target}")
    problems = violations(graph)
    print(f"cycles: {len(cycles(graph))}; rule violations: {len(problems)}")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
