"""The ``harmonixr`` command: parses arguments and calls one library function per command.

One module per command group (``data``, ``ask``, ``index``, ``train``, ``experiment``,
``viz``); what they share is in ``_common``. The work itself is done by the library: a command
only turns its options into a call and the answer into a table or JSON."""

from __future__ import annotations

import os
import sys

from harmonixr.cli import ask, data, experiment, index, train, viz  # noqa: F401  (registers)
from harmonixr.cli._common import app, console

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: library errors become one readable line and exit code 1."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]: rerun the same command to continue")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("HARMONIXR_DEBUG"):
            raise
        text = str(exc) if isinstance(exc, ValueError | OSError) else f"{type(exc).__name__}: {exc}"
        from rich.markup import escape

        console.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)
        sys.exit(1)
