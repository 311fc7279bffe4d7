"""The rooms keep their doors: the engine runs without Flask or Redis, imports run one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("stream", "shared", "web")
ALLOWED = {"stream": set(), "shared": {"stream"}, "web": {"stream", "shared"}}


def test_the_engine_imports_neither_flask_nor_redis() -> None:
    """Every module of ``axrisi.stream`` imported in a fresh interpreter: no flask, no redis."""
    modules = [f"axrisi.stream.{p.stem}" for p in (ROOT / "axrisi" / "stream").glob("*.py")
               if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'redis', "
            "'werkzeug', 'limits', 'flask_limiter')))")
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert found == "[]"


def rooms_imported_by(path: Path) -> set[str]:
    """The rooms that one module imports (relative or absolute), from its syntax tree."""
    here = path.relative_to(ROOT / "axrisi").parts
    package = list(here[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not node.module:
                    target += [alias.name for alias in node.names]
            else:
                target = (node.module or "").split(".")[1:] if (node.module or "").startswith(
                    "axrisi.") else []
            if target and target[0] in ROOMS:
                found.add(target[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "axrisi" and len(parts) > 1 and parts[1] in ROOMS:
                    found.add(parts[1])
    return found


def test_imports_run_one_way() -> None:
    """web may use shared and stream, shared may use stream, stream uses neither."""
    wrong = []
    for room in ROOMS:
        for path in (ROOT / "axrisi" / room).glob("*.py"):
            for other in rooms_imported_by(path) - {room} - ALLOWED[room]:
                wrong.append(f"{path.relative_to(ROOT)} imports axrisi.{other}")
    assert not wrong
