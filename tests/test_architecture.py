"""The package keeps the structure docs/architecture.md describes (tools/import_graph.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import import_graph  # noqa: E402


def test_the_package_breaks_no_rule() -> None:
    assert import_graph.problems(ROOT) == []


def test_the_check_finds_a_cycle_and_a_hidden_import(tmp_path: Path) -> None:
    # A copy of the package with spec <-> storage importing each other, one of
    # them inside a function: the check must name both.
    for folder in import_graph.FOLDERS:
        (tmp_path / folder).mkdir()
        for path in (ROOT / folder).glob("*.py"):
            (tmp_path / folder / path.name).write_text(path.read_text())
    storage = tmp_path / "rechunker_core" / "storage.py"
    storage.write_text(
        storage.read_text()
        + "\n\ndef _late() -> None:\n    from rechunker_core.spec import CopySpec\n"
    )
    found = import_graph.problems(tmp_path)
    assert any(p.startswith("import cycle:") and "storage" in p for p in found), found
    assert "rechunker_core.storage imports rechunker_core.spec inside a function" in found


def test_no_test_module_imports_another() -> None:
    done = subprocess.run(
        ["grep", "-rlE", r"^(from|import) tests\.test_", str(ROOT / "tests")],
        capture_output=True,
        text=True,
    )
    assert done.stdout == "", done.stdout
