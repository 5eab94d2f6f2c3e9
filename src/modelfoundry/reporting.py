"""How long work reports its progress without printing: a small Reporter protocol the CLI, tests and a UI implement.

The library never prints. Training, cross-validation, tuning and compression report to the Reporter they are
given; the CLI passes its terminal one (cli/progress.py), tests a silent or recording one, a web UI its own.
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Where long work says how far it is. One task at a time: `start`, any `advance`/`message`, `finish`."""

    live: bool  # True: `advance` is seen as it happens (a bar), so callers need not also log each step as a line

    def start(self, task: str, total: int | None = None, *, completed: int = 0) -> None:
        """Begin `task` (a short label) over `total` units (None: unknown), `completed` of them done already."""
        ...

    def advance(self, completed: int | None = None, *, status: str | None = None) -> None:
        """Move to `completed` units (None: one more), with `status` (e.g. the latest loss) when given."""
        ...

    def message(self, text: str) -> None:
        """A line worth keeping (a finished fold; an epoch, when not `live`), shown above any bar."""
        ...

    def finish(self) -> None:
        """End the task where the work ended (a bar that stopped early ends full)."""
        ...


class SilentReporter:
    """Reports nothing (`live`, so callers compose no lines for it)."""

    live = True

    def start(self, task: str, total: int | None = None, *, completed: int = 0) -> None:
        pass

    def advance(self, completed: int | None = None, *, status: str | None = None) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


def reporter_for(progress: Reporter | bool | None) -> Reporter | None:
    """The reporter to report to, or None for none: False, None and True (from before reporters; the library
    never prints by itself) all mean silence, and callers then skip the work of reporting altogether."""
    return None if progress is None or isinstance(progress, bool) else progress
