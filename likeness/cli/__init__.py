"""The `likeness` command line: one module per command or group of commands, each parsing its options and
calling into the library (`likeness.run.prepare*` holds what a run checks before any work); `app.py` lists them.

This module stays light: `main` takes Ctrl-C and SIGTERM before the commands and their libraries are imported.
"""

from __future__ import annotations

from likeness.heap import collect_less_often
from likeness.run.interrupts import stop_on_signal_at_start_up


def main() -> None:
    """The `likeness` command: a signal ends it from its first instant, before any work starts."""
    stop_on_signal_at_start_up()
    collect_less_often()
    from likeness.cli.app import app

    app()
