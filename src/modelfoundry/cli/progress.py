"""The terminal reporter: long work as a rich bar on a terminal; off one (a log, a pipe, CI) only its lines."""

from __future__ import annotations

from typing import Any

from modelfoundry.cli.console import open_console


class TerminalReporter:
    """A Reporter (modelfoundry.reporting) for the CLI. On a terminal each task is a bar with its label, units
    done of the total, its status and the time; lines print above it. Off a terminal only the lines print,
    at full width, and the caller (knowing it is not `live`) sends the ones worth keeping."""

    def __init__(self, *, transient: bool = False):
        self.console = open_console()
        self.live = self.console.is_terminal
        self.transient = transient  # the bar disappears when its task ends
        self.bar: Any = None

    def start(self, task: str, total: int | None = None, *, completed: int = 0) -> None:
        self.finish()
        if not self.live:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn()]
        if total is not None:
            columns.append(MofNCompleteColumn())
        columns += [TextColumn("{task.fields[status]}"), TimeRemainingColumn() if total else TimeElapsedColumn()]
        self.bar = Progress(*columns, console=self.console, transient=self.transient, refresh_per_second=4)
        self.task = self.bar.add_task(task, total=total, completed=completed, status="")
        self.bar.start()

    def advance(self, completed: int | None = None, *, status: str | None = None) -> None:
        if self.bar is None:
            return
        fields = {} if status is None else {"status": status}
        if completed is None:
            self.bar.update(self.task, advance=1, **fields)
        else:
            self.bar.update(self.task, completed=completed, **fields)

    def message(self, text: str) -> None:
        (self.bar.console if self.bar is not None else self.console).print(text, markup=False, soft_wrap=True)

    def finish(self) -> None:
        if self.bar is None:
            return
        task = self.bar.tasks[0]
        if task.total is not None and task.completed < task.total:  # stopped early: the bar ends full, where it ended
            self.bar.update(self.task, total=task.completed)
        self.bar.stop()
        self.bar = None


def reporter(no_progress: bool, *, transient: bool = False) -> TerminalReporter | None:
    """The reporter a command passes to api/: none with --no-progress."""
    return None if no_progress else TerminalReporter(transient=transient)
