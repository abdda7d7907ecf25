"""The import rule: nothing below the dialects (finetune, generation, engines, core, prompting, parsers,
formats) imports a dialect package or the HTTP layer, and nothing below finetune imports finetune."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import minerva

PACKAGE = Path(minerva.__file__).parent
BELOW_DIALECTS = ("finetune", "generation", "engine", "core", "prompting", "parsers", "formats")
BELOW_FINETUNE = BELOW_DIALECTS[1:]
FORBIDDEN = ("minerva.dialects", "minerva.api")


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, function-level (lazy) imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_below_dialects() -> list[str]:
    return sorted(
        ".".join(("minerva", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        for layer in BELOW_DIALECTS for path in (PACKAGE / layer).rglob("*.py")
    )


def test_no_module_below_the_dialects_names_a_dialect_in_its_source():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in imported_modules(path) if n.startswith(FORBIDDEN))
        for layer in BELOW_DIALECTS for path in (PACKAGE / layer).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_module_below_finetune_imports_it():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in imported_modules(path) if n.startswith("minerva.finetune"))
        for layer in BELOW_FINETUNE for path in (PACKAGE / layer).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_every_generation_layer_module_loads_no_dialect():
    modules = modules_below_dialects()
    assert "minerva.generation.chat" in modules and "minerva.engine.llamacpp.scheduler" in modules
    assert "minerva.finetune.runner" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
