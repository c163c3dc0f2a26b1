"""The brief's layering, kept: an engine imports no Gradio, no storage and nothing of the studio
or the benchmarks (engines are used by both, so an import the other way is a cycle waiting to
happen, and a benchmark is not installed with the app)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_ENGINES = ("gradio", "studio", "benchmarks", "sqlite3", "sqlalchemy", "psycopg")


def imported_roots(path: Path) -> set[str]:
    """The top-level package of every import in the file, at any depth (lazy imports count)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_engines_import_no_ui_storage_studio_or_benchmarks() -> None:
    bad = {}
    for path in sorted((ROOT / "engines").rglob("*.py")):
        found = imported_roots(path) & set(FORBIDDEN_IN_ENGINES)
        if found:
            bad[str(path.relative_to(ROOT))] = sorted(found)
    assert not bad, bad


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from benchmarks.prompt_adherence import x\n    import gradio as gr\n")
    assert imported_roots(module) == {"benchmarks", "gradio"}
