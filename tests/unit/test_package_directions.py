"""The package-direction table of the design, enforced: packages point one way, so each can be
read, tested and replaced alone.

| package       | may import (of ours)     |
|---------------|--------------------------|
| router        | nothing                  |
| proxy_model   | router                   |
| deployments   | router, proxy_model      |
| loadgen       | router, proxy_model      |
| cluster       | all                      |

Every ``import`` counts, wherever it stands (module level or inside a function), and no module
imports a ``_private`` name from another module of ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("router", "proxy_model", "deployments", "loadgen", "cluster")
ALLOWED = {
    "router": set(),
    "proxy_model": {"router"},
    "deployments": {"router", "proxy_model"},
    "loadgen": {"router", "proxy_model"},
    "cluster": set(OURS),
}


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names imported from it) for every import statement in ``path``."""
    here = _module_name(path)
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            out.append((node.lineno, module, [alias.name for alias in node.names]))
    return out


def violations(package: str) -> list[str]:
    found = []
    for path in _modules(package):
        rel = path.relative_to(ROOT)
        for line, module, names in _imports(path):
            top = module.split(".")[0]
            if top not in OURS:
                continue
            if top != package and top not in ALLOWED[package]:
                found.append(f"{rel}:{line}: {package} imports {module} (allowed: {sorted(ALLOWED[package]) or 'nothing'})")
            if module != _module_name(path):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                private += [p for p in module.split(".") if p.startswith("_") and not p.startswith("__")]
                if private:
                    found.append(f"{rel}:{line}: imports private name(s) {private} from {module}")
    return found


@pytest.mark.parametrize("package", OURS)
def test_package_imports_follow_the_direction_table(package):
    assert violations(package) == []


def test_the_check_sees_imports_inside_functions_and_private_names(tmp_path, monkeypatch):
    """The walker itself: a lazy import that breaks the table and a private name are both caught."""
    pkg = tmp_path / "router"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("def f():\n    from loadgen.client import Client\n    return Client\n")
    (pkg / "sneaky.py").write_text("from router.bad import _hidden\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    found = violations("router")
    assert any("router/bad.py:2: router imports loadgen.client" in v for v in found), found
    assert any("router/sneaky.py:1: imports private name(s) ['_hidden']" in v for v in found), found
    assert len(found) == 2
