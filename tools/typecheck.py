"""Type-check the package under its installed module names (``make lint`` runs this).

``mypy rechunker_core executors`` would name the folder ``executors/`` after
itself, while the code imports it as ``rechunker_core.executors`` (the
``package-dir`` mapping in pyproject.toml); mypy cannot follow the import hook
of an editable install, so with ``ignore_missing_imports`` every import of
``rechunker_core.executors`` would silently be ``Any``. This parses mypy's
command line as mypy does (settings: ``[tool.mypy]`` in pyproject.toml), then
gives each file its installed module name before checking.

Usage: ``python tools/typecheck.py [mypy options]``
"""

from __future__ import annotations

import sys

from mypy import build
from mypy.errors import CompileError
from mypy.main import process_options

#: Repository folder -> the package it installs as (pyproject.toml's package-dir).
INSTALLED_AS = {"rechunker_core": "rechunker_core", "executors": "rechunker_core.executors"}


def main(argv: list[str]) -> int:
    """Check every package of :data:`INSTALLED_AS`; return mypy's exit status."""
    sources, options = process_options([*argv, *INSTALLED_AS])
    for source in sources:
        folder, dot, rest = source.module.partition(".")
        source.module = INSTALLED_AS[folder] + dot + rest
    try:
        messages = build.build(sources, options).errors
        status = 0
    except CompileError as error:  # a blocking error: mypy stops at it
        messages = error.messages
        status = 2
    for message in messages:
        print(message)
    errors = [message for message in messages if ": error:" in message]
    if status or errors:
        files = len({message.partition(":")[0] for message in errors})
        print(f"Found {len(errors)} errors in {files} files (checked {len(sources)} source files)")
        return status or 1
    print(f"Success: no issues found in {len(sources)} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
