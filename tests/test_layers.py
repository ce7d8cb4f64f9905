"""The package's structure (docs/architecture.md): layers and cycles are import-linter's job
(``lint-imports`` in .ci/run, contracts in pyproject.toml); here, that no module reaches into
another module's private names, and that the stand-in stays out of the product."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flexprice_beam"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def test_no_module_imports_another_modules_private_names():
    reaches = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flexprice_beam"):
                reaches += [f"{path.relative_to(PACKAGE)}: from {node.module} import {a.name}"
                            for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert reaches == []


def test_no_module_reads_private_attributes_of_an_imported_module():
    reaches = []
    for path, tree in _modules():
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.asname or a.name for a in node.names
                             if a.name.startswith("flexprice_beam")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flexprice_beam"):
                imported |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in imported and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                reaches.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: "
                               f"{node.value.id}.{node.attr}")
    assert reaches == []


def test_the_stand_in_is_its_own_package():
    assert not (PACKAGE / "mock").exists()
    import flexprice_mock

    assert "flexprice_beam" not in Path(flexprice_mock.__file__).parts
