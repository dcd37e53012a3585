"""What the commands say on the console: one line each, and one line with exit 2 for a refusal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from likeness.run.errors import describe_failure
from likeness.run.prepare import CHECK_FAILURES

console = Console(stderr=True)


def say(message: str) -> None:
    console.print(message, soft_wrap=True, highlight=False, markup=False)


def fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


@contextmanager
def refusing() -> Iterator[None]:
    """A problem found before any work ends the command with its one line (exit 2)."""
    try:
        yield
    except CHECK_FAILURES as exc:
        fail(str(exc))
    except OSError as exc:
        fail(describe_failure(exc))
