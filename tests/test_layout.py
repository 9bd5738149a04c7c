"""The rooms keep their rules (scripts/import_graph.py): no import cycle, no arrow from the enclave image
(`core`, `link`, `enclave`) to `sidecar`, `cli` or `dev`, no private names across modules, a pure core.
Checked in-process from the source, and shown to catch each kind of breach on a planted copy."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import ROOT


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


def test_the_tree_keeps_the_rules() -> None:
    graph_mod = _script()
    graph = graph_mod.build()
    assert len(graph.modules) > 50 and "clave.enclave.service" in graph.modules
    assert graph_mod.violations(graph) == []
    arrows = graph_mod.room_arrows(graph)
    for image_room in ("core", "link", "enclave"):
        for outside in ("sidecar", "cli", "dev"):
            assert arrows[(image_room, outside)] == 0


def test_the_check_catches_each_breach(tmp_path: Path) -> None:
    graph_mod = _script()
    package = tmp_path / "clave"
    shutil.copytree(ROOT / "src" / "clave", package, ignore=shutil.ignore_patterns("__pycache__"))
    assert graph_mod.violations(graph_mod.build(package)) == []
    (package / "enclave" / "leak.py").write_text("from clave.sidecar.config import SidecarConfig\n")
    (package / "core" / "io.py").write_text("import socket\n")
    (package / "link" / "a.py").write_text("def f():\n    from clave.link import b\n")
    (package / "link" / "b.py").write_text("from clave.link.a import f\n")
    (package / "dev" / "peek.py").write_text("from clave.enclave.service import _private\n")
    found = "\n".join(graph_mod.violations(graph_mod.build(package)))
    assert "forbidden arrow enclave -> sidecar: clave.enclave.leak" in found
    assert "core is pure, but clave.core.io imports socket" in found
    assert "import cycle: clave.link.a <-> clave.link.b" in found
    assert "clave.dev.peek imports private clave.enclave.service._private" in found
