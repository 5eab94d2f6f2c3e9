"""The CLI's console, and FoundryErrors shown as one clean paragraph with their exit code (never a traceback)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer

PIPED_WIDTH = 1000  # off a terminal rich would assume 80 columns: cut tables, commands wrapped mid-way


def open_console(stderr: bool = False) -> Any:
    """A console for the CLI's output; off a terminal (a pipe, a log, CI) lines are never wrapped or cut."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.soft_wrap = True
        console.width = max(console.width, PIPED_WIDTH)
    return console


def friendly_errors(command: Callable) -> Callable:
    """Print FoundryErrors as one clean paragraph (no traceback) and exit with their code. Credentials in URIs
    are redacted from everything printed, tracebacks of unexpected errors included."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from modelfoundry.errors import FoundryError
        from modelfoundry.redact import redact, redact_exception

        def text(value: Any) -> str:  # redacted, and literal: a '[...]' in a message is not rich markup
            from rich.markup import escape

            return escape(redact(value))

        try:
            return command(*args, **kwargs)
        except FoundryError as exc:
            console = open_console(stderr=True)
            console.print(f"[bold red]Error:[/] {text(exc.message)}", soft_wrap=True, markup=True)
            if exc.hint:
                console.print(f"[bold]Next:[/] {text(exc.hint)}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # permissions, a full disk, a path that is a directory: not a bug, say so
            where = f" '{text(exc.filename)}'" if exc.filename else ""
            open_console(stderr=True).print(f"[bold red]Error:[/] could not access{where}: "
                                        f"{text(exc.strerror or exc)}.", soft_wrap=True)
            if isinstance(exc, IsADirectoryError):
                open_console(stderr=True).print("[bold]Next:[/] Give the path of a file (inside that directory, or "
                                            "elsewhere), not of a directory.", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            open_console(stderr=True).print("Interrupted.")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug: its traceback stays, without the credentials of any URI in it
            redact_exception(exc)
            raise

    return wrapper
